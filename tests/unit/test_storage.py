"""The store's I/O on a local path and on a real S3 endpoint (moto's server): whole objects, listings,
local copies for the backends, and one clear error for a store that cannot be written."""
import os
import threading
import time
import uuid

import pyarrow as pa
import pytest

from store import io
from store.records import load_records, write_records
from tests.conftest import make_bucket
from tests.unit.records_factory import make_records


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_server")
    return make_bucket(f"unit-{uuid.uuid4().hex[:12]}") + "/store"


def test_whole_objects_round_trip_and_list(root):
    io.write_text(io.join(root, "a", "x.json"), '{"x": 1}')
    io.write_bytes(io.join(root, "a", "b", "y.bin"), b"\x00\x01")
    assert io.read_text(io.join(root, "a", "x.json")) == '{"x": 1}'
    assert io.is_file(io.join(root, "a", "b", "y.bin")) and not io.is_file(io.join(root, "a"))
    assert io.list_files(io.join(root, "a")) == [io.join(root, "a", "b", "y.bin"),
                                                           io.join(root, "a", "x.json")]
    assert io.list_files(io.join(root, "a"), suffix=".json") == [io.join(root, "a", "x.json")]
    assert io.list_dirs(io.join(root, "a")) == [io.join(root, "a", "b")]
    assert io.list_files(io.join(root, "nothing")) == []


def test_records_written_and_read_through_the_store(root):
    table = make_records(n_runs=2, n_ckpts=2, n_examples=3)
    location = write_records(table, io.join(root, "records", "r", "step_000001.original.parquet"))
    records = load_records([io.join(root, "records")])
    assert len(records) == table.num_rows and records.sources == [location]


def test_local_copy_of_a_checkpoint_directory(root, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "weights.bin").write_bytes(b"w" * 1000)
    location = io.upload_dir(src, io.join(root, "ckpts", "step_000003"))
    local = io.local_copy(location, cache_root=tmp_path / "cache")
    assert (os.path.exists(os.path.join(local, "config.json"))
            and open(os.path.join(local, "sub", "weights.bin"), "rb").read() == b"w" * 1000)
    io.drop_local_copy(location, local)
    if io.is_uri(location):
        assert not os.path.exists(local)  # the node's cached copy is cleaned after
    else:
        assert local == location and os.path.exists(local)  # a local store's files are never removed


def test_unwritable_store_is_one_error_naming_it(tmp_path, s3_server):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(io.StorageError, match=str(blocked)):
        io.check_writable(str(blocked / "store"))
    with pytest.raises(io.StorageError, match="s3://no-such-bucket-premem/x"):
        io.check_writable("s3://no-such-bucket-premem/x")


def test_a_write_that_fails_midway_leaves_the_previous_object(root):
    """A table Parquet cannot hold fails while its bytes are made, before any upload: the previous object is
    there as it was, and nothing else (a local rename that fails: tests/unit/test_bad_input.py)."""
    location = io.join(root, "t.parquet")
    io.write_parquet(pa.table({"a": [1, 2]}), location)
    unwritable = pa.table({"a": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})
    with pytest.raises(pa.ArrowNotImplementedError, match="month_day_nano_interval"):
        io.write_parquet(unwritable, location)
    assert io.list_files(root) == [location] and io.read_parquet(location).column("a").to_pylist() == [1, 2]


# Multi-MB objects of distinct sizes and bytes: a prefix, a mix of two, or a torn write is never one of them.
VERSIONS = [bytes([i]) * ((3 + i) * 2**20 + i) for i in range(3)]


def _outcome(location: str) -> int | None | str:
    """Which of VERSIONS a read of `location` returned; None when there is no object."""
    try:
        data = io.read_bytes(location)
    except FileNotFoundError:
        return None
    return VERSIONS.index(data) if data in VERSIONS else f"{len(data)} bytes, bytes {sorted(set(data))}"


def _read_while_written(write_next, read, enough, deadline_s: float = 60.0) -> list:
    """Outcomes of `read()`, taken while a thread calls `write_next(i)` for i = 0, 1, ... without pause, until
    `enough(outcomes)` (or the deadline)."""
    stop, failures, outcomes = threading.Event(), [], []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                write_next(i)
                i += 1
        except Exception as exc:
            failures.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + deadline_s
    try:
        while not enough(outcomes) and time.monotonic() < deadline and not failures:
            outcomes.append(read())
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not failures, failures
    return outcomes


def test_a_reader_sees_no_object_or_all_of_it(root):
    """A reader polling an object while it is being written gets no object until the write completes, then
    the whole object: never a prefix. Each object is written once, under a fresh name."""
    written: list[str] = []
    reading = threading.Lock()  # held by a read: the writer's clean-up of old objects never races one

    def write_next(i: int) -> None:
        location = io.join(root, "fresh", f"{i:05d}.bin")
        written.append(location)  # named before its write starts: the reader polls it from then on
        io.write_bytes(location, VERSIONS[i % len(VERSIONS)])
        if i:
            with reading:
                io.delete_file(written[i - 1])

    def read() -> tuple[int, int | None | str]:
        while not written:
            time.sleep(0.001)
        with reading:
            i = len(written) - 1
            return i, _outcome(written[i])

    def enough(outcomes: list) -> bool:  # many reads, some before a write completed and some after
        return len(outcomes) >= 60 and {got is None for _, got in outcomes} == {True, False}

    outcomes = _read_while_written(write_next, read, enough)
    torn = [(i, got) for i, got in outcomes if got not in (None, i % len(VERSIONS))]
    assert not torn, f"{len(torn)} of {len(outcomes)} reads were part of an object: {torn[:3]}"
    assert enough(outcomes), outcomes


def test_a_rewritten_object_is_read_as_one_version(root):
    """While an object is rewritten again and again, each read returns one whole version of it (on S3 one GET:
    pyarrow's HEAD and ranged GETs returned a prefix of the newer version or a mix of two, 2026-11-30)."""
    location = io.join(root, "rewritten.bin")
    io.write_bytes(location, VERSIONS[0])
    outcomes = _read_while_written(lambda i: io.write_bytes(location, VERSIONS[i % len(VERSIONS)]),
                                   lambda: _outcome(location), lambda got: len(got) >= 60 and len(set(got)) > 1)
    torn = [got for got in outcomes if got not in range(len(VERSIONS))]
    assert not torn, f"{len(torn)} of {len(outcomes)} reads were no whole version: {torn[:3]}"
    assert len(outcomes) >= 60 and len(set(outcomes)) > 1  # the writes went on between the reads


@pytest.mark.parametrize("store,extra,message", [
    ("s3://no-such-bucket-premem/runs", ["tracking.uri=http://127.0.0.1:1"],
     "store.root=s3://no-such-bucket-premem/runs: cannot write there"),
    ("s3://no-such-bucket-premem/runs", [], "tracking.uri=None: give an MLflow server"),
])
def test_driver_refuses_bad_storage_with_one_line_exit_2(s3_server, capsys, store, extra, message):
    from orchestrator.__main__ import main

    code = main([f"store.root={store}", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_driver_refuses_an_unwritable_local_store(tmp_path, capsys):
    from orchestrator.__main__ import main

    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert main([f"store.root={blocked}/runs"]) == 2
    err = capsys.readouterr().err
    assert f"store.root={blocked}/runs: cannot write there" in err and len(err.strip().splitlines()) == 1


def test_a_hub_model_id_stays_a_hub_id(tmp_path, monkeypatch):
    """`org/name` that is no path here is handed to the HF loaders as it is, not made `<cwd>/org/name`."""
    monkeypatch.chdir(tmp_path)
    assert io.local_copy("meta-llama/Meta-Llama-3-8B") == "meta-llama/Meta-Llama-3-8B"
    (tmp_path / "models" / "tiny").mkdir(parents=True)  # a relative path that exists is a local directory
    assert io.local_copy("models/tiny") == str(tmp_path / "models" / "tiny")
    assert io.local_copy("./models/tiny") == str(tmp_path / "models" / "tiny")


def _fetch_after(barrier, location: str, cache: str, out) -> None:
    barrier.wait()  # all fetchers start together, as a trial's workers on one node do
    try:
        out.put(("ok", io.local_copy(location, cache_root=cache)))
    except Exception as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def test_concurrent_fetchers_on_a_node_share_one_copy(s3_server, tmp_path):
    """N workers of a node asking for the same object-store model at once all get one complete copy; none
    fails on the rename and no partial copy is left behind."""
    import multiprocessing

    src = tmp_path / "model"
    src.mkdir()
    for i in range(8):
        (src / f"shard-{i}.bin").write_bytes(os.urandom(512 * 1024))
    (src / "config.json").write_text("{}")
    location = io.upload_dir(src, make_bucket(f"unit-{uuid.uuid4().hex[:12]}") + "/base/model")
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    n = 4
    barrier, out = context.Barrier(n), context.Queue()
    procs = [context.Process(target=_fetch_after, args=(barrier, location, str(cache), out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [status for status, _ in results] == ["ok"] * n, results
    assert len({path for _, path in results}) == 1
    local = results[0][1]
    assert sorted(os.listdir(local)) == sorted(os.listdir(src))
    assert all(open(os.path.join(local, f), "rb").read() == (src / f).read_bytes() for f in os.listdir(src))
    leftovers = [p for p in cache.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []
