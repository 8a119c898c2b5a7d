"""The HF backend: batched scoring equals the one-example-per-forward loop; seeded sampling reproduces."""
import numpy as np
import torch

from workers.backends import SamplingSettings
from workers.backends.hf import HFBackend, length_batches
from workers.tasks import PromptFormat
from workers.tasks.synthetic import make_examples
from workers.train import encode_pair


def naive_ref_nll(model, tokenizer, prompt, target) -> float:
    """The paper's pipeline: one forward pass per example."""
    ids, labels = encode_pair(tokenizer, prompt, target, 10**9)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    logp = torch.log_softmax(logits.double(), -1)
    nll = [-logp[i, ids[i + 1]].item() for i in range(len(ids) - 1) if labels[i + 1] != -100]
    return float(np.mean(nll))


def test_batched_scoring_matches_per_example_loop(tiny_model_dir):
    backend = HFBackend(threads=1)
    backend.load(str(tiny_model_dir))
    fmt = PromptFormat()
    examples = make_examples(1, 40, "score", max_steps=4)
    prompts = [fmt.prompt(e.question) for e in examples]
    targets = [fmt.target(e.solution) for e in examples]
    fast = backend.score(prompts, targets, batch_tokens=2048)
    slow = [naive_ref_nll(backend.model, backend.tokenizer, p, t) for p, t in zip(prompts, targets)]
    np.testing.assert_allclose(fast, slow, rtol=1e-4)


def test_seeded_sampling_is_reproducible(tiny_model_dir):
    backend = HFBackend(threads=1)
    backend.load(str(tiny_model_dir))
    prompts = [PromptFormat().prompt(e.question) for e in make_examples(2, 12, "sample")]
    settings = SamplingSettings(k=3, max_new_tokens=16, seed=7, batch_tokens=4096)
    first, second = backend.sample(prompts, settings), backend.sample(prompts, settings)
    assert first == second
    assert all(len(c) == 3 for c in first)
    other = backend.sample(prompts, SamplingSettings(k=3, max_new_tokens=16, seed=8, batch_tokens=4096))
    assert other != first


def test_length_batches_respect_budget_and_cover_everything():
    lengths = [5, 50, 7, 30, 30, 2, 90]
    batches = length_batches(lengths, budget=100)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
