"""Config composition, validation (one line, exit 2, nothing written) and grid expansion."""
import pytest

from orchestrator.__main__ import compose_config, main, plan_sweep
from orchestrator.config import ConfigError, validate
from orchestrator.plan import expand_grid, flatten_grid


def test_defaults_compose_and_expand_to_six_trials():
    cfg, sweep_id, specs = plan_sweep([])
    assert cfg.train.zero_stage == 2 and cfg.sampler.k == 5 and cfg.sampler.temperature == 0.8
    assert len(specs) == 6
    assert [s.grid_values for s in specs[:2]] == [{"train.lr": 3e-4, "train.epochs": 1},
                                                  {"train.lr": 3e-4, "train.epochs": 3}]
    assert len({s.run_id for s in specs}) == 6
    assert specs[3].config["train"]["lr"] == 1e-3 and specs[3].config["train"]["epochs"] == 3


def test_grid_from_command_line():
    cfg = compose_config(["~sweep.grid.train.epochs", "sweep.grid.train.lr=[0.001]",
                          "+sweep.grid.task.train_fraction=[0.5,1.0]", "+sweep.grid.seed=[0,1,2]"])
    specs = expand_grid(cfg, "x")
    assert len(specs) == 6 and specs[-1].config["seed"] == 2 and specs[0].config["task"]["train_fraction"] == 0.5
    assert specs[0].grid_values == {"train.lr": 0.001, "task.train_fraction": 0.5, "seed": 0}
    # Dotted keys (as a YAML file may write them) name the same axes as nested ones.
    assert flatten_grid({"train.lr": [1], "task": {"seed": [2]}}) == {"train.lr": [1], "task.seed": [2]}


@pytest.mark.parametrize("overrides,message", [
    (["train.foo=1"], "train.foo: Key 'foo' not in 'TrainConfig'"),
    (["train.lr=abc"], "train.lr: Value 'abc' of type 'str' could not be converted to Float"),
    (["train.lr=0"], "train.lr=0.0: must be > 0"),
    (["task.train_fraction=1.5"], "task.train_fraction=1.5: must be in (0, 1]"),
    (["task.train_fraction=0"], "task.train_fraction=0.0: must be in (0, 1]"),
    (["sampler.k=0"], "sampler.k=0: samples per question must be >= 1"),
    (["sampler.nice=20"], "sampler.nice=20: must be in 0..19"),
    (["sampler.score_batch_tokens=0"], "sampler.score_batch_tokens=0: must be >= 1"),
    (["task.name=gsm8k", "task.path=/no/such.jsonl", "model.path=/tmp"], "task.path='/no/such.jsonl': dataset file"),
    (["model.path=/no/such/model"], "model.path='/no/such/model': not an HF model directory"),
    (["sweep.grid.train.lr=[0.001,-1]", "~sweep.grid.train.epochs"], "sweep.grid point 1: train.lr=-1.0: must be > 0"),
    (["+sweep.grid.train.nope=[1]"], "sweep.grid.train.nope: not a config field"),
    (["train.global_batch_size=12"], "train.global_batch_size=12: must be a multiple of micro_batch_size"),
    (["sampler=vllm_gpu", "sampler.tensor_parallel_size=2"], "sampler.gpus_per_actor=1.0: must be 0 (CPU) or"),
    (["sampler.dtype=fp8"], "sampler.dtype='fp8': must be auto, float32, bfloat16 or float16"),
    (["sampler.grade_timeout_s=0"], "sampler.grade_timeout_s=0.0: must be > 0"),
    (["sampler.grade_workers=0"], "sampler.grade_workers=0: must be >= 1"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, overrides, message):
    store = tmp_path / "store"
    code = main([f"store.root={store}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not store.exists()


def test_validate_accepts_gpu_settings():
    cfg = compose_config(["train=gpu", "sampler=vllm_gpu", "sampler.tensor_parallel_size=2",
                          "sampler.gpus_per_actor=2"])
    validate(cfg)
    assert cfg.train.zero_stage == 3 and cfg.train.precision == "bf16" and cfg.sampler.backend == "vllm"
    cpu = compose_config(["sampler=vllm"])
    validate(cpu)
    assert cpu.sampler.gpus_per_actor == 0 and cpu.sampler.max_new_tokens <= 128  # fits the tiny model's 256
    with pytest.raises(ConfigError):
        validate(compose_config(["train.precision=fp8"]))


def test_help_lists_groups(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m orchestrator" in out and "sampler" in out and "sweep" in out


def test_a_lost_sampling_pool_is_reported_not_swallowed():
    """The monitor keeps the pool's error; the summary names what never came back."""
    import threading

    from orchestrator import schedule

    class DeadPool:
        class drain:  # noqa: N801 (mimics an actor method)
            @staticmethod
            def remote():
                raise ConnectionError("actor unavailable")

    progress = schedule.Progress(total_trials=1, expected_checkpoints=2, trained=2)
    stop = threading.Event()
    stop.set()
    schedule.monitor_pool(DeadPool(), progress, print, print, stop)
    assert progress.monitor_error == "ConnectionError: actor unavailable"
    from orchestrator.finish import Summary
    from orchestrator.store import sweep_paths

    text = Summary(None, 0.1, 1, (0.0, 0.0), None, {}, ok=False).text("sqlite:///x", sweep_paths("/tmp/x", "s"),
                                                                       progress)
    assert "NOT EVALUATED: 2 of 2 trained checkpoints never came back" in text and "actor unavailable" in text
