"""The HF backend: batched scoring equals the one-example-per-forward loop; seeded sampling reproduces."""
import numpy as np
import torch

import workers.backends.hf as hf
from workers.backends import SamplingSettings, cut_at_stop
from workers.backends.hf import HFBackend, StopDetector, draw, length_batches
from workers.tasks import PromptFormat
from workers.tasks.synthetic import make_examples
from workers.tokens import encode_pair


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


def hf_greedy(backend: HFBackend, prompt: str, max_new_tokens: int, stop: str) -> str:
    """`generate` with greedy decoding and a stop string, one prompt at a time."""
    tok = backend.tokenizer
    ids = torch.tensor([[tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]])
    out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, stop_strings=[stop], tokenizer=tok,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return cut_at_stop(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), stop)


def test_greedy_sampler_equals_generate_with_rows_leaving_the_batch(tiny_model_dir, monkeypatch):
    """Shared prefill, the preallocated cache, stop detection and compaction change nothing in the tokens."""
    backend = HFBackend(threads=1)
    backend.load(str(tiny_model_dir))
    torch.manual_seed(0)  # large random weights: greedy output varies by prompt instead of repeating one token
    for weight in backend.model.parameters():
        if weight.dim() > 1:
            weight.data.normal_(0, 0.3)
    prompts = [PromptFormat().prompt(e.question) for e in make_examples(3, 24, "greedy")]
    stop = " "  # so rows end at many different steps
    settings = SamplingSettings(k=2, temperature=0.0, max_new_tokens=24, stop=stop, batch_tokens=4096)
    expected = [hf_greedy(backend, p, 24, stop) for p in prompts]
    assert len({len(e) for e in expected}) > 3  # rows really do end at different steps
    for compact_below in (0.0, hf.COMPACT_BELOW, 1.0):  # never, the default, at every finished row
        monkeypatch.setattr(hf, "COMPACT_BELOW", compact_below)
        assert backend.sample(prompts, settings) == [[e, e] for e in expected]


def test_nucleus_draw_follows_transformers_top_p():
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn(6, 200) * torch.tensor([[0.5], [1.0], [2.0], [4.0], [8.0], [0.1]])  # flat to peaked
    temperature, top_p = 0.8, 0.9
    reference = TopPLogitsWarper(top_p)(None, logits / temperature).softmax(-1)
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([draw(logits, temperature, top_p, generator, candidates=16) for _ in range(4000)], 1)
    for row in range(len(logits)):
        assert set(draws[row].tolist()) <= set(torch.nonzero(reference[row]).flatten().tolist())
        freq = torch.bincount(draws[row], minlength=200).double() / draws.shape[1]
        assert (freq - reference[row].double()).abs().max() < 0.03
    assert torch.equal(draw(logits, 0.0, top_p, generator), logits.argmax(-1))


def test_stop_detector_ends_a_row_at_the_token_that_completes_the_stop(tiny_model_dir):
    from workers.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    stop = "\nDone."
    ids = tok(" 3 + 4 = 7.\n#### 7\nDone. more text", add_special_tokens=False)["input_ids"]
    detector = StopDetector(tok, stop, tok.eos_token_id)
    generated = torch.tensor([ids])
    ended_at = [step for step in range(len(ids))
                if detector.ended(generated[:, step], generated, torch.tensor([0]), step)[0]]
    first = ended_at[0]
    assert stop in tok.decode(ids[: first + 1]) and stop not in tok.decode(ids[:first])
    eos = torch.tensor([tok.eos_token_id])
    assert detector.ended(eos, eos[None], torch.tensor([0]), 0)[0]


def test_saving_and_loading_a_model_draw_no_progress_bars(tiny_model_dir, tmp_path, capfd):
    """The driver's terminal (base build, IFD scores) and worker logs get no transformers bar per save or load."""
    from transformers.utils import logging as transformers_logging

    from workers.models import load_model, load_tokenizer, save_pretrained_atomic

    transformers_logging.enable_progress_bar()  # as a fresh process has it
    model = load_model(str(tiny_model_dir))
    transformers_logging.enable_progress_bar()
    save_pretrained_atomic(model, load_tokenizer(str(tiny_model_dir)), tmp_path / "copy")
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "Writing model shards" not in out + err
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_backends_are_made_by_registered_name_and_validated_against_the_registry():
    """A backend is a name in workers.backends.BACKENDS: make_backend builds it (importing its module only
    then), and sampler.backend accepts auto or a registered name, nothing else."""
    import pytest

    from orchestrator.config import ConfigError, compose_config, validate
    from workers.backends import BACKENDS, make_backend

    assert list(BACKENDS) == ["hf", "vllm"]
    assert isinstance(make_backend("hf"), HFBackend) and isinstance(make_backend("auto"), HFBackend)
    with pytest.raises(ValueError, match="unknown sampler backend 'x'"):
        make_backend("x")
    with pytest.raises(ConfigError, match=r"^sampler.backend='x': must be auto, hf or vllm$"):
        validate(compose_config(["sampler.backend=x"]))
