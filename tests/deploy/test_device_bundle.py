"""`make device-bundle`'s tree in a fresh Python 3.12 environment that stands in for the lent GPU machine.

The environment holds what the bundle's manifest says the device provides (numpy, pandas, pyarrow, grpcio, ...),
installed from cp312 wheels; the bundle goes first on PYTHONPATH, as bench.gpu_smoke's documented command puts
it. No torch: none for Python 3.12 installs here (the wheel index here has CPU torch for cp311 only; PyPI's cp312
torch is the CUDA build with some GB of nvidia-* wheels), so what imports torch (deepspeed, ray.train.torch,
workers/) is checked by requirement (`pip check`: torch is the only thing missing) rather than by import; the GPU
run's own stage 0 imports it there (bench/gpu_smoke.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# downloads kept between runs (ignored by git); PREMEM_DEVICE_WHEELS moves them (a CI clone can share one folder)
CACHE = Path(os.environ.get("PREMEM_DEVICE_WHEELS") or REPO / ".device-bundle" / "wheels")
PY312 = next(iter(sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))), None)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(PY312 is None, reason="no Python 3.12 (pyenv) on this machine")]

# What the sweep's driver, trial workers and pool import that needs no torch; premem's own modules among them.
IMPORTS = ("ray", "ray.tune", "ray.train", "ray.train.v2.api.callback", "ray.tune.integration.ray_train",
           "hydra", "hydra.core.override_parser.overrides_parser", "omegaconf", "antlr4",
           "mlflow", "mlflow.entities", "mlflow.artifacts", "mlflow.data.code_dataset_source", "sqlalchemy", "alembic",
           "math_verify", "hjson", "pydantic", "orchestrator.config", "orchestrator.plan", "orchestrator.tracking",
           "store.io", "analysis.premem", "analysis.fit", "analysis.sources")
NEVER = ("torch", "triton", "vllm", "flashinfer", "nvidia")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, dict]:
    """The bundle built by its CLI (xz level 0: the same tree, packed in seconds) and unpacked as on the device."""
    out = tmp_path_factory.mktemp("bundle")
    subprocess.run([str(PY312), "-m", "bench.device_bundle", "--out", str(out), "--cache", str(CACHE),
                    "--xz-preset", "0", "--max-mib", "1024"], cwd=REPO, check=True)
    manifest = json.loads((out / "manifest.json").read_text())
    site = out / "site"
    site.mkdir()
    subprocess.run(["tar", "-xJf", manifest["bundle"], "-C", str(site)], check=True)
    return site, manifest


@pytest.fixture(scope="module")
def device_python(bundle, tmp_path_factory) -> Path:
    """A fresh Python 3.12 venv with the packages the device provides (the manifest's versions), no torch."""
    _, manifest = bundle
    venv = tmp_path_factory.mktemp("venv312")
    subprocess.run([str(PY312), "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    provided = [p for p in manifest["device_provides"] if not p.split("==")[0].startswith(NEVER)]
    wheels = CACHE / "device"
    pip = [str(python), "-m", "pip", "-q", "--disable-pip-version-check"]
    for args in (["download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)],
                 ["install", "--no-deps", "--no-index", "--no-compile", "--find-links", str(wheels)]):
        done = subprocess.run([*pip, *args, *provided], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    return python


def test_bundle_holds_no_torch_cuda_or_vllm(bundle):
    site, manifest = bundle
    top = {p.name.split("-")[0].lower() for p in site.iterdir()}
    assert not [name for name in top if name.startswith(NEVER)], sorted(top)
    assert not [t for t in manifest["travels"] if t.split("==")[0].startswith(NEVER)]
    assert not (site / "ray" / "jars").exists()  # Ray's Java jar (31 MiB) stays behind
    assert (site / "deepspeed").is_dir() and (site / "ray").is_dir() and (site / "mlflow").is_dir()
    assert not any(p.startswith(("transformers==", "accelerate==", "pyarrow==", "pandas==")) for p in manifest["travels"])


def test_bundle_imports_and_runs_in_python_312(bundle, device_python):
    """Everything the sweep imports without torch imports; MLflow on SQLite, MATH grading and a local Ray task
    with the sweep's runtime_env work; and nothing a bundled package requires is missing but torch."""
    site, _ = bundle
    env = {**os.environ, "PYTHONPATH": f"{site}:{REPO}", "PYTHONNOUSERSITE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    script = textwrap.dedent(f"""
        import importlib, os, sys, tempfile
        assert sys.version_info[:2] == (3, 12), sys.version
        for name in {IMPORTS!r}:
            module = importlib.import_module(name)
            top = name.split(".")[0]
            if top not in ("orchestrator", "store", "analysis"):  # the bundle's copy, not some other
                assert module.__file__.startswith({str(site)!r}), (name, module.__file__)
        from importlib.util import find_spec
        assert find_spec("torch") is None
        from math_verify import parse, verify
        assert verify(parse("$\\\\frac{{1}}{{2}}$"), parse("$0.5$"))
        from mlflow import MlflowClient
        with tempfile.TemporaryDirectory() as tmp:
            client = MlflowClient(f"sqlite:///{{tmp}}/mlflow.db")
            run = client.create_run(client.create_experiment("bundle"))
            client.log_metric(run.info.run_id, "test_acc", 0.5, step=1)
            assert client.get_metric_history(run.info.run_id, "test_acc")[0].value == 0.5
        import ray
        ray.init(num_cpus=1, include_dashboard=False, runtime_env={{"env_vars": {{"PREMEM_PROBE": "1"}}}})
        assert ray.get(ray.remote(lambda: os.environ.get("PREMEM_PROBE")).remote()) == "1"
        ray.shutdown()
        print("imports ok")
    """)
    done = subprocess.run([str(device_python), "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the bundle alone on the path (the repo's premem.egg-info would add premem's own requirements)
    check = subprocess.run([str(device_python), "-m", "pip", "check"], env={**env, "PYTHONPATH": str(site)},
                           capture_output=True, text=True)
    problems = [line for line in check.stdout.splitlines() if line.strip()]
    assert problems and all("requires torch" in line for line in problems), problems
