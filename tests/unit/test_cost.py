"""`--plan`: a sweep's steps, checkpoints, samples, tokens and bytes before it runs, counted as the trainer and
the pool will do it."""
from dataclasses import asdict

import pytest
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from orchestrator.__main__ import main
from orchestrator.sweep import plan_sweep
from orchestrator.cost import parameter_count, trial_cost, trial_steps
from workers.settings import steps_per_epoch


@pytest.mark.parametrize("n,micro,world,accumulation", [(256, 8, 1, 1), (48, 4, 2, 2), (50, 8, 4, 1), (33, 4, 2, 3),
                                                        (7473, 8, 8, 2), (10, 4, 2, 1)])
def test_steps_per_epoch_is_what_torchs_sampler_and_loader_give(n, micro, world, accumulation):
    """The trainer's loop runs len(loader) // accumulation optimizer steps per rank: the planner's count must be
    that number, with torch's own DistributedSampler (padding to equal shards) and DataLoader."""
    data = list(range(n))
    loader = DataLoader(data, batch_size=micro, sampler=DistributedSampler(data, num_replicas=world, rank=world - 1))
    assert steps_per_epoch(n, micro, world, accumulation) == len(loader) // accumulation


def test_parameter_count_reads_the_models_config_without_loading_it(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert parameter_count({"path": str(tiny_model_dir)}) == sum(p.numel() for p in model.parameters())


def test_an_8b_plan_counts_its_bytes(tmp_path, capsys):
    """Llama-3-8B's config (8,030,261,248 parameters): 16.1 GB of bf16 weights and 96.4 GB of ZeRO-3 engine
    state per checkpoint, for sweep=gpu on a cluster group; printed without starting or writing anything."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                tie_word_embeddings=False).save_pretrained(tmp_path / "llama3-8b")
    overrides = ["train=gpu", "sampler=vllm_gpu", "sweep=gpu", "model=hf", f"model.path={tmp_path / 'llama3-8b'}",
                 "train.num_workers=8", f"store.root={tmp_path / 'store'}"]
    _, _, specs = plan_sweep(overrides)
    assert parameter_count(asdict(specs[0].config.model)) == 8_030_261_248
    cost = trial_cost(specs[0], 8_030_261_248)
    assert cost.weight_bytes == 2 * 8_030_261_248 and cost.engine_bytes == 12 * 8_030_261_248
    assert main([*overrides, "--plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: 6 trials, 12 checkpoints, 8.03B parameters") and "16.1 GB" in out and "96.4 GB" in out
    assert not (tmp_path / "store").exists()


def test_trial_steps_of_the_default_sweep():
    _, _, specs = plan_sweep([])
    assert [trial_steps(s) for s in specs] == [(32, 6), (8, 8), (4, 8)] * 2  # steps per epoch, checkpoints
    assert {trial_steps(s)[0] * s.config.train.epochs for s in specs} == {96}  # equal compute


def test_data_that_do_not_fill_one_batch_are_refused_in_one_line(tmp_path, capsys):
    assert main(["sweep=small", "task.n_train=8", "train.micro_batch_size=8", "train.global_batch_size=16",
                 f"store.root={tmp_path / 'store'}"]) == 2
    err = capsys.readouterr().err
    assert "train.global_batch_size=16: 8 train examples (task.n_train x task.train_fraction) do not fill one " \
           "global batch" in err and len(err.strip().splitlines()) == 1
