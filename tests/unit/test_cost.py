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


def _loop_saves(spec, base_model: str, monkeypatch) -> list[int]:
    """The steps at which workers/train.py's loop saves a checkpoint for this trial, as rank 0 of its
    `train.num_workers`: the real loop, data, sampler and loader, with DeepSpeed's engine and Ray Train's context
    replaced by stand-ins that do no math and report nothing."""
    import sys
    import types

    import ray.train
    import torch

    import workers.placement
    import workers.train
    from orchestrator.jobs import trial_jobs
    from store.layout import sweep_paths

    class Engine:
        device = "cpu"

        def __call__(self, **batch):
            return types.SimpleNamespace(loss=torch.zeros(()))

        def train(self):
            pass

        def backward(self, loss):
            pass

        def step(self):
            pass

    world = spec.config.train.num_workers
    context = types.SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: world)
    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(
        init_distributed=lambda: None,
        initialize=lambda model, optimizer, lr_scheduler, config, dist_init_required: (Engine(), optimizer, None,
                                                                                        lr_scheduler)))
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(workers.placement, "here", lambda device: {})
    saves = []
    monkeypatch.setattr(workers.train, "_save_and_report", lambda engine, tokenizer, job, position, *rest:
                        saves.append(position["step"]))
    job, _ = trial_jobs(spec, sweep_paths("/nonexistent", "s"), base_model)
    threads = torch.get_num_threads()
    try:
        workers.train.train_loop_per_worker({**asdict(job), "train": asdict(job.train)})
    finally:
        torch.set_num_threads(threads)
    return saves


@pytest.mark.parametrize("overrides", [
    [],  # the default sweep: checkpoints twice an epoch, and every 12 steps in the regimes of 12 and 24 epochs
    # 2 ranks, accumulation 2: 101 examples padded to shards of 51, 13 micro-batches a rank (the odd one unused)
    ["sweep=small", "task.n_train=101", "train.num_workers=2", "train.micro_batch_size=4",
     "train.global_batch_size=16", "train.checkpoints_per_epoch=3"],
    ["sweep=small", "task.n_train=101", "train.num_workers=2", "train.micro_batch_size=4",
     "train.global_batch_size=16", "train.save_every_steps=5"],  # 12 steps: 5, 10 and the last one
    ["sweep=small", "train.checkpoints_per_epoch=0"],  # the final checkpoint only
], ids=["default", "per-epoch-uneven", "every-n-steps", "final-only"])
def test_the_plan_counts_the_checkpoints_the_training_loop_saves(overrides, tiny_model_dir, monkeypatch):
    """--plan's checkpoint count (and the progress bar's) is the number of checkpoints workers/train.py's loop
    saves for the same trial, the last step always among them."""
    _, _, specs = plan_sweep(overrides)
    for spec in {s.config.task.train_fraction: s for s in specs}.values():  # one trial per data regime
        saves = _loop_saves(spec, str(tiny_model_dir), monkeypatch)
        steps, checkpoints = trial_steps(spec)
        assert (len(saves), saves[-1]) == (checkpoints, steps * spec.config.train.epochs), (spec.label, saves)
