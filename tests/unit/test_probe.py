"""The weight-swap check: the trainer's probe NLL against what the pool's loaded weights give; a swap made to skip a
layer is caught, the engine rebuilt from the checkpoint, and the event recorded with the checkpoint's metrics."""
from __future__ import annotations

import shutil
from dataclasses import asdict

import torch

from workers.backends import SamplingSettings
from workers.backends.hf import HFBackend
from workers.grading import Grader
from workers.models import load_model, load_tokenizer
from workers.probe import PROBE_FILE, TOLERANCE, check_loaded_weights, tolerance, trainer_probe_nll, write_probe
from workers.sample import EvalJob, evaluate_checkpoint
from workers.tasks import load_task
from workers.train import probe_texts

TASK = dict(name="synthetic", seed=0, train_fraction=1.0, n_train=12, n_test=8, min_steps=2, max_steps=2,
            max_number=10, path=None, test_path=None)
SETTINGS = SamplingSettings(k=2, max_new_tokens=8, batch_tokens=4096)


class SwapSkippingALayer(HFBackend):
    """An in-place swap with a fault: every tensor but layer 1's is copied into the running model (what a stale
    reload looks like); a load into a closed backend is a whole, fresh one."""

    def load(self, checkpoint_dir: str) -> None:
        if self.model is None:
            return super().load(checkpoint_dir)
        new = load_model(checkpoint_dir, self.dtype).state_dict()
        self.model.load_state_dict({k: v for k, v in new.items() if ".layers.1." not in k}, strict=False)


def trained_checkpoint(tiny_model_dir, tmp_path):
    """A checkpoint whose weights differ from the base model's in every layer, with the trainer's probe."""
    path = tmp_path / "step_000002"
    shutil.copytree(tiny_model_dir, path)
    model, tokenizer = load_model(str(path)), load_tokenizer(str(path))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    prompts, targets = probe_texts(load_task(**TASK).train, {})
    write_probe(path, prompts, targets, trainer_probe_nll(model, tokenizer, prompts, targets), "fp32")
    return path


def test_a_swap_that_skips_a_layer_is_rebuilt_and_recorded(tiny_model_dir, tmp_path):
    checkpoint = trained_checkpoint(tiny_model_dir, tmp_path)
    backend = SwapSkippingALayer(threads=1)
    backend.load(str(tiny_model_dir))
    backend.load(str(checkpoint))  # the faulty swap
    metrics = check_loaded_weights(backend, str(checkpoint), SETTINGS)
    assert metrics["weight_check_rebuilds"] == 1
    assert metrics["probe_nll_max_abs_diff_before_rebuild"] > TOLERANCE["fp32"]
    assert metrics["probe_nll_max_abs_diff"] <= TOLERANCE["fp32"]  # the fresh load has the checkpoint's weights


def test_a_correct_swap_passes_and_the_pool_records_the_check(tiny_model_dir, tmp_path):
    checkpoint = trained_checkpoint(tiny_model_dir, tmp_path)
    backend = HFBackend(threads=1)
    backend.load(str(tiny_model_dir))
    splits = load_task(**TASK)
    job = EvalJob("run-a", 2, 1.0, str(checkpoint), str(tmp_path / "rec.parquet"), str(tmp_path / "comp.parquet"),
                  TASK, {}, asdict(SETTINGS))
    result = evaluate_checkpoint(backend, job, splits, Grader(splits.grader))
    assert result.metrics["weight_check_rebuilds"] == 0
    assert result.metrics["probe_nll_max_abs_diff"] <= TOLERANCE["fp32"]


def test_a_checkpoint_without_a_probe_is_not_checked(tiny_model_dir):
    assert not (tiny_model_dir / PROBE_FILE).exists()
    backend = HFBackend(threads=1)
    backend.load(str(tiny_model_dir))
    assert check_loaded_weights(backend, str(tiny_model_dir), SETTINGS) == {}


def test_the_tolerance_is_the_looser_dtype_s():
    assert tolerance("fp32", "torch.float32") == TOLERANCE["fp32"]
    assert tolerance("bf16", "torch.float32") == tolerance("fp32", "bfloat16") == TOLERANCE["16bit"]
