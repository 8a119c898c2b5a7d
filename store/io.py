"""Files under a store URI: a local path, a shared-filesystem path, or an object store (s3://, gs://).

pyarrow's filesystems do the I/O, as Ray Train's own storage does (S3-compatible endpoints through
AWS_ENDPOINT_URL and the usual AWS variables). Every write is of a whole object: a temp file renamed into
place on a filesystem, a single completed upload on an object store; a reader never sees half a written
file. Reads of s3:// objects are one GET of the whole object (boto3), never pyarrow's HEAD and ranged GETs:
those can straddle a rewrite of the object and return a mix of two versions (tests/unit/test_storage.py);
Parquet files there are fetched whole and parsed in memory (per-checkpoint records files are small).
This is the lowest layer: every stage reads and writes the store through it; store/layout.py builds the paths.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class StorageError(OSError):
    """A store location that cannot be used; the message names the URI."""


def is_uri(location: str | os.PathLike) -> bool:
    """An object-store (or other non-local) URI, as opposed to a local or shared-filesystem path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def normalize(location: str | os.PathLike) -> str:
    """A URI unchanged (no trailing slash); a local path made absolute."""
    text = str(location)
    if is_uri(text):
        return text.rstrip("/")
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """`location`/part/part: '/' for URIs and POSIX paths alike."""
    return "/".join([location.rstrip("/"), *(p.strip("/") for p in parts)])


def name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def parent(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[0]


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a store location."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), normalize(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, OSError) as exc:
        raise StorageError(f"{location}: {exc}") from None


def exists(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_files(location: str, suffix: str = "", recursive: bool = True) -> list[str]:
    """Files under a directory (sorted), as locations of the same kind as `location`."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    prefix = location.rstrip("/")
    return sorted(prefix + info.path[len(path.rstrip("/")):] for info in infos
                  if info.type == pafs.FileType.File and info.path.endswith(suffix)
                  and not name(info.path).startswith("."))


def file_sizes(location: str) -> dict[str, int]:
    """{path relative to `location`: bytes} of every file under a directory (empty when it is not there)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return {}
    root = path.rstrip("/") + "/"
    return {info.path[len(root):]: info.size for info in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if info.type == pafs.FileType.File}


def list_dirs(location: str) -> list[str]:
    """Immediate subdirectories of a directory (sorted)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(join(location, name(i.path)) for i in infos if i.type == pafs.FileType.Directory)


@functools.lru_cache(maxsize=1)
def _s3_client():
    import boto3  # endpoint, region and credentials from the environment, as pyarrow's S3 filesystem takes them

    return boto3.session.Session().client("s3")


def _get_s3_object(location: str) -> bytes:
    """The whole object in one GET: one version of it, however often it is rewritten meanwhile."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = normalize(location)[len("s3://"):].partition("/")
    try:
        return _s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(location) from None
        raise StorageError(f"{location}: {exc}") from None
    except BotoCoreError as exc:
        raise StorageError(f"{location}: {exc}") from None


def read_bytes(location: str) -> bytes:
    if str(location).startswith("s3://"):
        return _get_s3_object(location)
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str, data: bytes) -> str:
    """Write a whole object: temp name + rename locally; on an object store one upload, completed on close."""
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except BaseException:  # a failed write leaves the previous file as it was, and no temp file
            tmp.unlink(missing_ok=True)
            raise
        return location
    # The bytes are all in memory before the upload starts: a failure before close leaves no object.
    with fs.open_output_stream(path) as f:
        f.write(data)
    return location


def write_text(location: str, text: str) -> str:
    return write_bytes(location, text.encode())


def write_parquet(table: pa.Table, location: str) -> str:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return write_bytes(location, buffer.getvalue().to_pybytes())


def parquet_source(location: str) -> tuple[object, pafs.FileSystem | None]:
    """(source, filesystem) for pyarrow.parquet: a local path as it is; an s3:// object fetched whole in one GET
    (read_bytes), so that its schema and rows come from one version even while it is rewritten."""
    if str(location).startswith("s3://"):
        return pa.BufferReader(read_bytes(location)), None
    fs, path = resolve(location)
    return path, fs


def read_parquet(location: str, **kwargs) -> pa.Table:
    source, fs = parquet_source(location)
    return pq.read_table(source, filesystem=fs, **kwargs)


def upload_dir(local_dir: str | os.PathLike, location: str) -> str:
    """Copy a local directory to a store location (files first, then `config.json` for an HF directory,
    whose presence marks it complete)."""
    fs, path = resolve(location)
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "config.json")
    for p in files:
        write_bytes(join(location, str(p.relative_to(local_dir))), p.read_bytes())
    return location


def is_hub_name(location: str | os.PathLike) -> bool:
    """An HF hub model id (`org/name`) that is not a path on this machine: loaders fetch it from the hub."""
    text = str(location)
    parts = text.split("/")
    return (not is_uri(text) and len(parts) == 2 and all(parts) and not text.startswith((".", "~"))
            and not Path(text).exists())


def local_copy(location: str, cache_root: str | os.PathLike | None = None, skip: tuple[str, ...] = ()) -> str:
    """A local directory with the contents of `location` (less the subdirectories named in `skip`): the path
    itself when it is local, a hub model id unchanged (the HF loaders resolve it), else one copy per node in
    its cache. Concurrent callers on a node (a trial's workers) take a lock: the first fetches, under a temp
    name renamed into place so a half-fetched copy is never used; the others wait for it and use it."""
    if is_hub_name(location):
        return str(location)
    if not is_uri(location):
        return normalize(location)
    root = Path(cache_root or Path(tempfile.gettempdir()) / "premem-cache")
    target = root / hashlib.sha256(location.encode()).hexdigest()[:16] / name(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when its process dies
        if not target.is_dir():
            _fetch_dir(location, target, skip)
    return str(target)


def _fetch_dir(location: str, target: Path, skip: tuple[str, ...]) -> None:
    fs, path = resolve(location)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            relative = info.path[len(path.rstrip("/")) + 1:]
            if info.type != pafs.FileType.File or relative.split("/", 1)[0] in skip:
                continue
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(tmp / relative, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        os.replace(tmp, target)
    except BaseException:  # a failed fetch leaves no orphaned partial copy behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def delete_file(location: str) -> None:
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def delete_dir(location: str) -> None:
    """Remove a directory and everything under it (nothing when it is not there)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def drop_local_copy(location: str, local: str) -> None:
    """Remove a cached copy made by `local_copy` (never the store's own files)."""
    if is_uri(location):
        shutil.rmtree(Path(local).parent, ignore_errors=True)


def check_writable(location: str) -> None:
    """Write and delete a small object at the store root; StorageError naming the URI when that fails."""
    probe = join(location, f".premem-probe-{os.getpid()}")
    try:
        write_bytes(probe, b"ok")
        fs, path = resolve(probe)
        fs.delete_file(path)
    except StorageError:
        raise
    except Exception as exc:  # permissions, a missing bucket, bad credentials, no endpoint
        detail = " ".join(str(exc).split())[:300]
        raise StorageError(f"store.root={location}: cannot write there ({type(exc).__name__}: {detail})") from None
