"""Benchmark: what the store costs per checkpoint, on a local path and on an S3 server (moto, started here).

Per checkpoint the store sees: the trial's upload of the HF directory, a sampler's fetch of it to its node's
disk, and the records (and completions) written back as whole objects. The checkpoint is the tiny default
model; the records file one checkpoint's worth of the default task. Called by bench/evaluation.py.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from store import io
from store.records import RECORDS_SCHEMA, write_records


def _records(n: int = 512) -> pa.Table:
    return pa.table({"run_id": ["r"] * n, "step": np.full(n, 12), "epoch": np.full(n, 1.0),
                     "split": ["train"] * (n // 2) + ["test"] * (n - n // 2),
                     "example_id": [f"e{i}" for i in range(n)], "n_samples": np.full(n, 5),
                     "n_correct": np.arange(n) % 6, "ref_nll": np.linspace(0.1, 2, n), "variant": ["original"] * n},
                    schema=RECORDS_SCHEMA)


def _costs(root: str, checkpoint: str, repeats: int) -> dict:
    uploads, fetches, writes = [], [], []
    table = _records()
    for i in range(repeats):
        location = io.join(root, f"ckpt-{i}")
        start = time.perf_counter()
        io.upload_dir(checkpoint, location)
        uploads.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            local = io.local_copy(location, cache_root=cache)
            fetches.append(time.perf_counter() - start)
            assert os.path.isfile(os.path.join(local, "config.json"))
        start = time.perf_counter()
        write_records(table, io.join(root, "records", f"step_{i:06d}.original.parquet"))
        writes.append(time.perf_counter() - start)
    return {"upload_s": statistics.median(uploads), "fetch_s": statistics.median(fetches),
            "records_write_s": statistics.median(writes),
            "per_checkpoint_s": statistics.median(uploads) + statistics.median(fetches) + statistics.median(writes)}


def bench_store(checkpoint: str, repeats: int = 5) -> dict:
    """Store costs per checkpoint, local path vs a local S3 server, side by side."""
    size = sum(p.stat().st_size for p in Path(checkpoint).rglob("*") if p.is_file())
    local_root = tempfile.mkdtemp(prefix="premem-store-bench-")
    out: dict = {"checkpoint_bytes": size, "repeats": repeats}
    try:
        out["local"] = _costs(local_root, checkpoint, repeats)
    finally:
        shutil.rmtree(local_root, ignore_errors=True)
    try:
        import boto3
    except ImportError:
        out["s3"] = {"skipped": "boto3/moto not installed (the test extra)"}
        return out
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    try:
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        for _ in range(100):
            try:
                boto3.client("s3").create_bucket(Bucket=bucket)
                break
            except Exception:  # the server is still starting
                time.sleep(0.2)
        out["s3"] = _costs(f"s3://{bucket}/store", checkpoint, repeats)
    finally:
        server.terminate()
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out["s3_over_local_per_checkpoint_s"] = out["s3"]["per_checkpoint_s"] - out["local"]["per_checkpoint_s"]
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
