"""The optional packages kept out of train workers and samplers (workers/lean_imports.py): without them deepspeed
and transformers still import, load a model and generate; with them installed and not kept out, those libraries
import both (the cost the module's docstring names)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from workers import lean_imports

WORKER_IMPORTS = """
import json, sys
from workers.lean_imports import UNUSED_IN_WORKERS, skip_unused_optional_imports
if sys.argv[2] == "skip":
    skip_unused_optional_imports()
import deepspeed
import torch
from workers.models import load_model, load_tokenizer
tokenizer, model = load_tokenizer(sys.argv[1]), load_model(sys.argv[1], torch.float32)
prompt = tokenizer("Q: 1 + 2", return_tensors="pt")
out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
print(json.dumps({"new_tokens": out.shape[1] - prompt["input_ids"].shape[1],
                  "imported": sorted(n for n in UNUSED_IN_WORKERS if sys.modules.get(n) is not None)}))
"""


def worker_imports(model_dir, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER_IMPORTS, str(model_dir), mode], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_deepspeed_and_transformers_load_and_generate_without_the_unused_packages(tiny_model_dir):
    result = worker_imports(tiny_model_dir, "skip")
    assert result == {"new_tokens": 4, "imported": []}


def test_left_to_themselves_deepspeed_and_transformers_import_both(tiny_model_dir):
    assert worker_imports(tiny_model_dir, "keep")["imported"] == sorted(lean_imports.UNUSED_IN_WORKERS)


def test_a_package_already_imported_is_left_alone(monkeypatch):
    monkeypatch.setattr(lean_imports, "UNUSED_IN_WORKERS", ("json", "premem_never_installed"))
    monkeypatch.delitem(sys.modules, "premem_never_installed", raising=False)
    lean_imports.skip_unused_optional_imports()
    try:
        assert sys.modules["json"] is json
        with pytest.raises(ImportError):
            import premem_never_installed  # noqa: F401
    finally:
        del sys.modules["premem_never_installed"]


def test_the_sweeps_environment_can_keep_them(monkeypatch):
    """PREMEM_KEEP_OPTIONAL_IMPORTS=1 on the driver reaches every worker through the job's environment, and there
    nothing is kept out (a train loop of one's own that logs to MLflow)."""
    from orchestrator.schedule import job_env

    monkeypatch.setattr(lean_imports, "UNUSED_IN_WORKERS", ("premem_never_installed",))
    monkeypatch.setenv(lean_imports.KEEP_ENV, "1")
    assert job_env()[lean_imports.KEEP_ENV] == "1"
    lean_imports.skip_unused_optional_imports()
    assert "premem_never_installed" not in sys.modules
    monkeypatch.delenv(lean_imports.KEEP_ENV)
    assert job_env()[lean_imports.KEEP_ENV] == "0"
