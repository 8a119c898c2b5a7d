"""Every kind of bad input, one table: the entry point exits 2 with one line naming the file, row or field,
and writes nothing (the store stays empty). Run in-process through each CLI's `main`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tests.unit.records_factory import make_records

GSM8K_ROW = {"question": "Tom has 3 apples and buys 2 more. How many?", "answer": "3 + 2 = 5\n#### 5"}


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def valid_records() -> pd.DataFrame:
    return make_records(2, 2, 6).to_pandas()


def records_file(path: Path, change) -> str:
    frame = change(valid_records())
    frame.to_parquet(path)
    return str(path)


def gsm8k(train: str, tiny_model_dir: Path, test: str | None = None) -> list[str]:
    return ["task=gsm8k", f"task.path={train}", f"task.test_path={test or train}", f"model.path={tiny_model_dir}",
            "model=hf"]


def FIT_OUT(inputs: Path) -> list[str]:  # noqa: N802 (reads as a constant in the table)
    return ["--json", str(inputs / "fit.json"), "--plots", str(inputs / "plots")]


CASES = {
    # id: (entry point, arguments(tmp, tiny model) -> argv, what the one line must name)
    "jsonl not JSON": ("orchestrator", lambda t, m: gsm8k(jsonl(t / "bad.jsonl", [GSM8K_ROW, "{not json"]), m),
                       ["task.path", "bad.jsonl", "line 2", "not JSON"]),
    "jsonl missing field": ("orchestrator", lambda t, m: gsm8k(
        jsonl(t / "part.jsonl", [GSM8K_ROW, GSM8K_ROW, {"question": "q"}]), m), ["part.jsonl", "line 3", "'answer'"]),
    "jsonl answer without ####": ("orchestrator", lambda t, m: gsm8k(
        jsonl(t / "noans.jsonl", [{"question": "q", "answer": "five"}]), m), ["noans.jsonl", "line 1"]),
    "bad test file": ("orchestrator", lambda t, m: gsm8k(jsonl(t / "ok.jsonl", [GSM8K_ROW]), m,
                                                          jsonl(t / "badtest.jsonl", ["[1, 2"])),
                      ["task.test_path", "badtest.jsonl", "line 1"]),
    "missing dataset file": ("orchestrator", lambda t, m: gsm8k(str(t / "nope.jsonl"), m),
                             ["task.path", "nope.jsonl", "does not exist"]),
    "bad grid value": ("orchestrator", lambda t, m: ["sweep.grid.train.lr=[0.001,-1]"],
                       ["train.lr", "-1", "must be > 0"]),
    "unknown field": ("orchestrator", lambda t, m: ["train.lrr=3"], ["train.lrr"]),
    "store not writable": ("orchestrator", lambda t, m: ["store.root=/proc/premem-store"], ["/proc/premem-store"]),
    "tracking server down": ("orchestrator", lambda t, m: ["tracking.uri=http://127.0.0.1:9"],
                             ["tracking.uri=http://127.0.0.1:9", "cannot be used"]),
    "records missing column": ("analysis", lambda t, m: ["fit", "--records", records_file(
        t / "nocol.parquet", lambda f: f.drop(columns=["ref_nll"])), *FIT_OUT(t)], ["nocol.parquet", "ref_nll"]),
    "records wrong type": ("analysis", lambda t, m: ["fit", "--records", records_file(
        t / "type.parquet", lambda f: f.assign(n_correct=f.n_correct.astype(str))), *FIT_OUT(t)], ["type.parquet", "n_correct"]),
    "records not parquet": ("analysis", lambda t, m: ["fit", "--records", str(
        Path(jsonl(t / "x.parquet", ["hello"]))), *FIT_OUT(t)], ["x.parquet", "not a readable Parquet file"]),
    "resume not a sweep": ("orchestrator.resume", lambda t, m: [str(t)], ["not a sweep directory"]),
    "reeval not a sweep": ("orchestrator.reeval", lambda t, m: [str(t), "sampler.variant=x"],
                           ["not a sweep directory"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_exit_2_nothing_written(case, tmp_path, tiny_model_dir, capsys, monkeypatch):
    import importlib

    entry, make_argv, names = CASES[case]
    store = tmp_path / "store"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    monkeypatch.chdir(tmp_path)  # a default ./runs would land here
    argv = make_argv(inputs, tiny_model_dir)
    if entry == "orchestrator" and not any(a.startswith("store.root=") for a in argv):
        argv.append(f"store.root={store}")
    module = importlib.import_module("orchestrator.__main__" if entry == "orchestrator" else f"{entry}"
                                     if entry != "analysis" else "analysis.__main__")
    code = module.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], f"{name!r} not in {lines[0]!r}"
    assert not store.exists() or not any(store.rglob("*")), f"written: {list(store.rglob('*'))}"
    assert not (tmp_path / "runs").exists()
    assert not (inputs / "fit.json").exists() and not (inputs / "plots").exists()


def test_a_write_that_fails_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    from store import io

    target = tmp_path / "records.parquet"
    io.write_bytes(str(target), b"previous")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left on device"):
        io.write_bytes(str(target), b"new and longer")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["records.parquet"]  # no temp file either


def test_records_factory_is_valid(tmp_path):
    """The table's records cases differ from a valid file only by what they break."""
    from store.records import load_records

    path = tmp_path / "ok.parquet"
    valid_records().to_parquet(path)
    assert load_records([str(path)]).step.size == len(pd.read_parquet(path))
