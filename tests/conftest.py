from pathlib import Path

import pytest

KANG = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang2024"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kang_dir() -> Path:
    if not (KANG / "kang_gsm8k_records.parquet").is_file():
        pytest.skip(f"the paper's released records are not at {KANG} (../shared/data/kang2024 beside the repo)")
    return KANG


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama model with a tokenizer trained on the synthetic task, saved as an HF directory."""
    from workers.models import build_tiny_model, build_tokenizer, save_pretrained_atomic
    from workers.tasks import PromptFormat
    from workers.tasks.synthetic import make_examples

    fmt = PromptFormat()
    corpus = [fmt.prompt(e.question) + fmt.target(e.solution) for e in make_examples(0, 300, "tok")]
    tokenizer = build_tokenizer(corpus, 400)
    model = build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, max_positions=256, seed=0)
    return save_pretrained_atomic(model, tokenizer, tmp_path_factory.mktemp("model") / "tiny")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc, log: Path, what: str, seconds: float = 120) -> None:
    """Until `url` answers; fails the test with the server's log if it never does (and kills it)."""
    import time

    import requests

    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            requests.get(url, timeout=10)
            return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet; or listening, its first answer slow
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{what} did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3 endpoint (moto's server mode), with the standard AWS variables pointed at it for this
    process and its children; yields the endpoint URL. Tests make their own buckets."""
    import os
    import subprocess
    import sys

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    wait_for_http(endpoint, proc, log, "moto server")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)


def make_bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
