"""Config composition, validation (one line, exit 2, nothing written) and grid expansion."""
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from orchestrator.__main__ import main
from orchestrator.config import compose_config
from orchestrator.sweep import plan_sweep
from orchestrator.config import ConfigError, to_yaml, validate
from orchestrator.plan import expand_grid, flatten_grid


def test_defaults_compose_and_expand_to_six_trials():
    cfg, sweep_id, specs = plan_sweep([])
    assert cfg.train.zero_stage == 2 and cfg.sampler.k == 5 and cfg.sampler.temperature == 0.8
    assert len(specs) == 6
    # 2 learning rates x 3 linked data regimes of 96 optimizer steps each
    assert [s.grid_values for s in specs[:2]] == [
        {"train.lr": 1e-3, "task.train_fraction": 1.0, "train.epochs": 3},
        {"train.lr": 1e-3, "task.train_fraction": 0.25, "train.epochs": 12, "train.save_every_steps": 12}]
    assert len({s.run_id for s in specs}) == 6
    assert specs[5].config.train.lr == 3e-3 and specs[5].config.train.epochs == 24
    assert specs[5].config.task.train_fraction == 0.125 and specs[0].config.train.checkpoints_per_epoch == 2
    _, _, lr_epochs = plan_sweep(["sweep=lr_epochs"])  # what `make curate` picks from
    assert [(s.config.train.lr, s.config.train.epochs) for s in lr_epochs][2:4] == [(1e-3, 1), (1e-3, 3)]


def test_grid_from_command_line():
    cfg = compose_config(["~sweep.grid.regime", "sweep.grid.train.lr=[0.001]",
                          "+sweep.grid.task.train_fraction=[0.5,1.0]", "+sweep.grid.seed=[0,1,2]"])
    specs = expand_grid(cfg, "x")
    assert len(specs) == 6 and specs[-1].config.seed == 2 and specs[0].config.task.train_fraction == 0.5
    assert specs[0].grid_values == {"train.lr": 0.001, "task.train_fraction": 0.5, "seed": 0}
    # Dotted keys (as a YAML file may write them) name the same axes as nested ones.
    assert flatten_grid({"train.lr": [1], "task": {"seed": [2]}}) == {"train.lr": [1], "task.seed": [2]}


def test_linked_axis_moves_fields_together():
    cfg = compose_config(["sweep=lr_epochs", "~sweep.grid.train.epochs", "sweep.grid.train.lr=[0.001,0.003]",
                          "+sweep.grid.regime=[{task.train_fraction:0.25,train.epochs:8},{task.train_fraction:1.0,train.epochs:2}]"])
    specs = expand_grid(cfg, "x")
    assert [(s.config.train.lr, s.config.task.train_fraction, s.config.train.epochs) for s in specs] \
        == [(0.001, 0.25, 8), (0.001, 1.0, 2), (0.003, 0.25, 8), (0.003, 1.0, 2)]
    assert specs[0].grid_values == {"train.lr": 0.001, "task.train_fraction": 0.25, "train.epochs": 8}
    assert specs[0].run_id == "x-t00-lr0.001_train_fraction0.25_epochs8"
    # nested mappings inside a linked value name the same fields as dotted keys
    cfg = compose_config(["sweep=lr_epochs", "~sweep.grid.train.epochs", "+sweep.grid.regime=[{train:{epochs:4}}]"])
    assert {s.config.train.epochs for s in expand_grid(cfg, "x")} == {4}


@pytest.mark.parametrize("overrides,message", [
    (["+sweep.grid.regime=[{train.nope:1}]"], "sweep.grid.regime.train.nope: not a config field"),
    (["sweep.color_by=train.nope"], "sweep.color_by='train.nope': must name a config field"),
    (["+sweep.grid.regime=[{train.epochs:2},3]"], "sweep.grid.regime: either every value sets several fields"),
    (["+sweep.grid.regime=[{}]"], "sweep.grid.regime: a linked value must set at least one field"),
    (["+sweep.grid.regime=[{sweep.nll_threshold:0.2}]"], "sweep.grid.regime.sweep.nll_threshold: not a config"),
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
    (["sweep.grid.train.lr=[0.001,-1]", "~sweep.grid.regime"], "sweep.grid point 1: train.lr=-1.0: must be > 0"),
    (["+sweep.grid.train.nope=[1]"], "sweep.grid.train.nope: not a config field"),
    (["train.global_batch_size=12"], "train.global_batch_size=12: must be a multiple of micro_batch_size"),
    (["sampler=vllm_gpu", "sampler.tensor_parallel_size=2"], "sampler.gpus_per_actor=1.0: must be 0 (CPU), sampler.tensor_parallel_size = 2"),
    (["train.gpus_per_worker=1.5"], "train.gpus_per_worker=1.5: must be in (0, 1]"),
    (["sampler.dtype=fp8"], "sampler.dtype='fp8': must be auto, float32, bfloat16 or float16"),
    (["sampler.grade_timeout_s=0"], "sampler.grade_timeout_s=0.0: must be > 0"),
    (["sampler.grade_workers=0"], "sampler.grade_workers=0: must be >= 1"),
    (["task.nll_threshold=0"], "task.nll_threshold=0.0: must be > 0"),
    (["task.nll_threshold=0.2", "sweep.nll_threshold=-1"], "sweep.nll_threshold=-1.0: must be > 0"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, overrides, message):
    store = tmp_path / "store"
    code = main([f"store.root={store}", *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not store.exists()


def test_validate_accepts_gpu_settings():
    cfg = compose_config(["train=gpu", "sampler=vllm_gpu", "sweep=gpu", "sampler.tensor_parallel_size=2",
                          "sampler.gpus_per_actor=2"])
    validate(cfg)
    assert cfg.train.zero_stage == 3 and cfg.train.precision == "bf16" and cfg.sampler.backend == "vllm"
    assert cfg.train.zero_init and cfg.train.gradient_checkpointing  # an 8B model's memory options
    cpu = compose_config(["sampler=vllm"])
    validate(cpu)
    assert cpu.sampler.gpus_per_actor == 0 and cpu.sampler.max_new_tokens <= 128  # fits the tiny model's 256
    with pytest.raises(ConfigError):
        validate(compose_config(["train.precision=fp8"]))


def test_help_lists_groups(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: python -m orchestrator" in out and "sampler" in out and "sweep" in out


def test_list_shows_every_preset_of_every_group_in_one_line_with_its_comment(capsys):
    """`python -m orchestrator --list`: each conf/<group>/ a heading, each preset one line with the first sentence
    of its leading comment (a preset without one fails here), the default of conf/config.yaml marked `*`."""
    from orchestrator.config import CONF_DIR, preset_line

    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        assert f"{group.name}:" in lines
        for preset in group.glob("*.yaml"):
            description = preset_line(preset)
            assert description and not description.startswith("@package"), preset
            (line,) = [row for row in lines if row[4:].split(" ", 1)[0] == preset.stem
                       and lines.index(row) > lines.index(f"{group.name}:")][:1]
            assert line[4:].split(None, 1)[1].startswith(description[:40].rstrip()), line
    assert "  * default    The demo sweep" in lines[lines.index("sweep:") + 1]
    assert any(r.startswith("  * synthetic") for r in lines) and any(r.startswith("    skills") for r in lines)
    assert preset_line(CONF_DIR / "cluster" / "local.yaml").startswith("A local Ray")


def test_a_lost_sampling_pool_is_reported_not_swallowed():
    """The event loop keeps the pool's error (and ends: no training is left); the summary names what never
    came back."""
    from orchestrator import schedule

    class DeadPool:
        class drain:  # noqa: N801 (mimics an actor method)
            @staticmethod
            def remote():
                raise ConnectionError("actor unavailable")

    progress = schedule.Progress(total_trials=1, expected_checkpoints=2, trained=2)
    assert list(schedule.stream_events(DeadPool(), progress, None)) == []
    assert progress.monitor_error == "ConnectionError: actor unavailable"
    from orchestrator.finish import Summary
    from store.layout import sweep_paths

    text = Summary(None, 0.1, 1, (0.0, 0.0), None, {}, ok=False).text("sqlite:///x", sweep_paths("/tmp/x", "s"),
                                                                       progress)
    assert "NOT EVALUATED: 2 of 2 trained checkpoints never came back" in text and "actor unavailable" in text


def test_credentials_in_tracking_uri_move_to_mlflows_variables(monkeypatch, tmp_path, capsys):
    """A password in tracking.uri never reaches the config that is written, logged and printed."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    cfg, _, _ = plan_sweep(["tracking.uri=https://premem:s%40cret-pw@mlflow.example:5000/prefix"])
    import os

    assert cfg.tracking.uri == "https://mlflow.example:5000/prefix"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("premem", "s@cret-pw")
    assert main(["--cfg", "tracking.uri=http://u:other-pw@h:1"]) == 0
    assert "other-pw" not in capsys.readouterr().out


def test_credentials_in_store_root_are_refused_and_not_echoed(capsys, tmp_path):
    assert main(["store.root=s3://AKIAKEY:aws-secret-value@bucket/runs", "tracking.uri=http://h:1"]) == 2
    err = capsys.readouterr().err
    assert "store.root=" in err and "AWS_ACCESS_KEY_ID" in err and "aws-secret-value" not in err


GPU_GRID = ["train=gpu", "sampler=vllm_gpu", "sweep=gpu"]  # what the GPU clusters' documented commands choose


@pytest.mark.parametrize("group", ["ray", "compose", "kuberay"])
def test_cluster_groups_take_store_and_tracking_from_the_environment(group, monkeypatch):
    monkeypatch.setenv("PREMEM_STORE_ROOT", "s3://premem/runs")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = compose_config([f"cluster={group}"])
    assert (cfg.cluster.address, cfg.store.root, cfg.tracking.uri) == ("auto", "s3://premem/runs", "http://mlflow:5000")
    # where it runs is not what runs: the cluster alone keeps the default groups
    assert (cfg.train.use_gpu, cfg.sampler.backend, cfg.sweep.name) == (False, "hf", "default")
    if group != "ray":  # the node groups' Ray resources place the workers, whatever the grid
        gpu = compose_config([f"cluster={group}", *GPU_GRID])
        assert gpu.train.use_gpu and gpu.sampler.backend == "vllm" and gpu.sweep.name == "gpu"
        for placed in (cfg, gpu):
            assert dict(placed.train.resources_per_worker) == {"trainer": 1}
            assert dict(placed.sampler.resources_per_actor) == {"sampler": 1}
        # later groups on the command line still win (the CPU run of the RayJob's entrypoint in the deploy test)
        cpu = compose_config([f"cluster={group}", *GPU_GRID, "train=cpu", "sampler=hf"])
        assert not cpu.train.use_gpu and dict(cpu.train.resources_per_worker) == {"trainer": 1}


def test_an_unset_variable_of_a_cluster_group_is_one_config_error(monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PREMEM_STORE_ROOT", "s3://premem/runs")
    assert main(["cluster=kuberay", "--cfg"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tracking.uri:") and "MLFLOW_TRACKING_URI" in err and len(err.splitlines()) == 1


def test_summary_puts_the_baselines_beside_the_fit_and_describes_the_parent_run():
    from analysis.fit import Fit
    from orchestrator.finish import Summary
    from store.layout import sweep_paths

    summary = Summary(Fit(0.9, 0.01, 0.93, 24, 0.91), 0.1, 6, (0.02, 0.45), None, {}, ok=True,
                      baselines={"train_acc": Fit(0.5, 0.0, 0.41, 24, -2.5), "ref_nll_mean": Fit(-0.2, 0.5, 0.22, 24)})
    paths = sweep_paths("/tmp/x", "s")
    text = summary.text("http://mlflow:5000", paths, urls=("http://mlflow:5000/#/experiments/1/runs/abc",
                                                           "http://mlflow:5000/#/experiments/1/runs"))
    # the identity line's R² first (the paper's measure), then the fitted line's
    assert "premem R² = 0.910 against y = x (test acc = premem train acc); fitted line R² = 0.930" in text
    assert ("baselines: train accuracy R² = -2.500 against y = x, 0.410 fitted, "
            "train NLL (reference solutions) R² = 0.220 fitted") in text
    assert "MLflow sweep run: http://mlflow:5000/#/experiments/1/runs/abc" in text
    note = summary.description(paths, "get-artifact?path=analysis%2Fpremem_vs_test.png&run_uuid=abc")
    assert "| pre-memorization train accuracy (τ = 0.1) | **0.910** | 0.930 |" in note
    assert "| train accuracy | -2.500 | 0.410 |" in note and "![premem vs test accuracy](get-artifact?" in note


def test_the_default_sweep_has_44_points_and_a_robustness_pass_the_small_one_neither():
    """The counts from the configs, by hand. train=cpu: one worker, micro = global batch = 8, so an epoch of n
    train examples is n / 8 optimizer steps; task=synthetic: n_train = 256.
    default: 2 lr x 3 regimes of 96 steps each (checkpoints_per_epoch = 2):
      all 256 examples: 32 steps an epoch, 3 epochs, a checkpoint every 32 / 2 = 16 steps: 96 / 16 = 6;
      a quarter (64): 8 steps an epoch, 12 epochs, save_every_steps = 12: 96 / 12 = 8;
      an eighth (32): 4 steps an epoch, 24 epochs, every 12 steps: 96 / 12 = 8;  2 x (6 + 8 + 8) = 44.
    lr_epochs: 3 lr x (1 + 3 epochs) x 2 checkpoints an epoch = 24.  small: 2 lr x 2 epochs x 1 = 4.
    That the trainer saves what the planner counts: tests/unit/test_cost.py."""
    from orchestrator.sweep import expected_checkpoints

    cfg, _, specs = plan_sweep([])
    regimes = [(s.config.task.train_fraction, s.config.train.epochs, s.config.train.save_every_steps) for s in specs]
    assert regimes == [(1.0, 3, 0), (0.25, 12, 12), (0.125, 24, 12)] * 2
    assert (cfg.task.n_train, cfg.train.micro_batch_size, cfg.train.global_batch_size, cfg.train.num_workers,
            cfg.train.checkpoints_per_epoch) == (256, 8, 8, 1, 2)
    assert expected_checkpoints(specs) == 2 * (96 // (256 // 8 // 2) + 96 // 12 + 96 // 12) == 44
    assert cfg.sweep.robustness_variant == "first"
    cfg, _, specs = plan_sweep(["sweep=lr_epochs"])
    assert sorted((s.config.train.lr, s.config.train.epochs) for s in specs) == [
        (lr, epochs) for lr in (3e-4, 1e-3, 3e-3) for epochs in (1, 3)]
    assert expected_checkpoints(specs) == 3 * (1 + 3) * 2 == 24
    cfg, _, specs = plan_sweep(["sweep=small"])
    assert [(s.config.train.epochs, s.config.train.checkpoints_per_epoch) for s in specs] == [(2, 1)] * 2
    assert expected_checkpoints(specs) == 2 * 2 * 1 == 4 and cfg.sweep.robustness_variant == ""
    with pytest.raises(ConfigError, match="sweep.robustness_variant='original'"):
        plan_sweep(["sweep.robustness_variant=original"])


def test_the_robustness_table_reaches_the_terminal_and_the_run_description():
    import pandas as pd

    from analysis.fit import Fit
    from orchestrator.finish import Summary
    from store.layout import sweep_paths

    summary = Summary(Fit(0.9, 0.01, 0.93, 24), 0.1, 6, (0.02, 0.45), None, {}, ok=True)
    summary.robustness = pd.DataFrame({"variant": ["first"] * 2, "premem_bin": ["[0.0, 0.5)", "[0.5, 1.0]"],
                                       "n": [10, 20], "premem_mean": [0.2, 0.8], "original_acc": [0.3, 0.9],
                                       "perturbed_acc": [0.1, 0.85], "acc_drop": [0.2, 0.05],
                                       "retained": [1 / 3, 0.85 / 0.9]})
    paths = sweep_paths("/tmp/x", "s")
    assert "robustness (variant 'first'" in summary.text("sqlite:///x", paths)
    assert "| [0.0, 0.5) | 10 | 0.300 | 0.100 | +0.200 | 0.333 |" in summary.description(paths, None)


def test_gpu_commands_run_the_gpu_grid_not_the_cpu_demo(monkeypatch):
    """train=gpu with the default group (the CPU demo: lr 1e-3/3e-3, 24-epoch arms, sweep.cpu_only) is refused in
    one line, on a GPU cluster too, and passes once the grid is declared for any device; the GPU clusters'
    commands name sweep=gpu, the paper's settings, which train=gpu's lr does not contradict."""
    cpu_grid_refused = r"^sweep.cpu_only=True: sweep=default is a grid sized for CPUs, .* use sweep=gpu"
    with pytest.raises(ConfigError, match=cpu_grid_refused):
        plan_sweep(["train=gpu", "sampler=vllm_gpu"])
    monkeypatch.setenv("PREMEM_STORE_ROOT", "/tmp/store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    for cluster in ("compose", "kuberay"):
        with pytest.raises(ConfigError, match=cpu_grid_refused):
            plan_sweep([f"cluster={cluster}", "train=gpu", "sampler=vllm_gpu"])
        validate(compose_config([f"cluster={cluster}", "train=gpu", "sampler=vllm_gpu", "sweep.cpu_only=false"]))
        cfg = compose_config([f"cluster={cluster}", *GPU_GRID])
        validate(cfg)
        specs = expand_grid(cfg, "x")
        assert cfg.sweep.name == "gpu" and cfg.train.use_gpu and cfg.sampler.backend == "vllm"
        lrs = {s.config.train.lr for s in specs}
        assert lrs and all(1e-5 <= lr <= 1e-4 for lr in lrs)
        assert max(s.config.train.epochs for s in specs) <= 6
        assert all(s.config.train.checkpoints_per_epoch == 1 and s.config.train.global_batch_size == 128
                   for s in specs)


def test_the_job_environment_does_not_carry_the_drivers_hardware():
    """The runtime_env every Ray process of the sweep gets: nothing in it depends on the driver's node (a
    GPU-less head must not tell GPU workers to use DeepSpeed's CPU accelerator)."""
    from orchestrator.schedule import dist_backend, job_env

    env = job_env()
    assert "DS_ACCELERATOR" not in env and "CUDA_VISIBLE_DEVICES" not in env
    gpu = OmegaConf.to_object(compose_config(["train=gpu", "sweep=gpu"]).train)
    assert dist_backend(gpu) == "nccl" and dist_backend(replace(gpu, dist_backend="gloo")) == "gloo"
    assert dist_backend(OmegaConf.to_object(compose_config([]).train)) == "gloo"


@pytest.mark.parametrize("overrides,message", [
    (["train.offload_param=cpu"], "train.offload_param='cpu': parameters are offloaded by ZeRO-3 only"),
    (["train.offload_optimizer=nvme"], "train.offload_optimizer='nvme': must be none or cpu"),
    (["train.zero_stage=0", "train.offload_optimizer=cpu"], "train.offload_optimizer='cpu': the optimizer is "
                                                              "offloaded by ZeRO stages 1-3"),
    (["train.placement_strategy=STRICT"], "train.placement_strategy='STRICT': must be PACK, STRICT_PACK or SPREAD"),
    (["train.dist_backend=nccl"], "train.dist_backend='nccl': nccl needs train.use_gpu=true"),
])
def test_gpu_fields_are_checked(overrides, message):
    with pytest.raises(ConfigError) as refused:
        validate(compose_config(overrides))
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("overrides,tau", [
    ([], 0.1),
    (["task=gsm8k"], 0.100259),  # exp(-2.3), the paper's GSM8k threshold
    (["task=math"], 0.182684),  # exp(-1.7), its MATH threshold
    (["task=math", "sweep=gpu"], 0.182684),
    (["task=math", "sweep.nll_threshold=0.3"], 0.3),  # set on the sweep: it wins
    (["task.nll_threshold=0.2", "sweep=small"], 0.2),
])
def test_the_sweeps_threshold_is_its_tasks_unless_set(overrides, tau):
    cfg = compose_config(overrides)
    assert cfg.sweep.nll_threshold == tau
    assert "nll_threshold: " + str(tau) in to_yaml(cfg)  # the stored config.yaml carries the value, resolved


def _every_group_option():
    from orchestrator.config import CONF_DIR

    return [(group.name, option.stem) for group in sorted(CONF_DIR.iterdir()) if group.is_dir()
            for option in sorted(group.glob("*.yaml"))]


@pytest.mark.parametrize("group,option", _every_group_option())
def test_every_yaml_under_conf_composes_and_validates(group, option, monkeypatch):
    """A config that no longer composes fails here, not on a user's first run. GPU groups validate beside the
    GPU sweep preset; the cluster groups with their environment set."""
    monkeypatch.setenv("PREMEM_STORE_ROOT", "/tmp/premem-store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    extra = {("train", "gpu"): ["sweep=gpu"]}
    cfg = compose_config([f"{group}={option}", *extra.get((group, option), [])])
    if (group, option) in {("model", "hf"), ("task", "gsm8k"), ("task", "math")}:
        return  # they need an HF model directory and dataset files; test_bad_config covers those checks
    validate(cfg)
    expand_grid(cfg, "x")


# conf/'s package convention. A preset holds its own group's fields (no `# @package` line), except in the groups
# below, whose presets are `# @package _global_` with their own fields under the group's key and, beside them,
# only these fields of other groups (docs/config.md lists them; a field under a listed one is covered by it):
GLOBAL_GROUPS = {
    "sweep": {
        "train.checkpoints_per_epoch": "a trial's evaluated points, part of the sweep's design",
        "store.keep": "sweep=gpu: an 8B grid keeps only each trial's last and best weights",
        "hydra.sweeper.params": "a grid in Hydra's spelling (sweep=lr_seeds), read by the premem sweeper",
    },
    "cluster": {  # where the sweep runs: every field here is a runtime field of orchestrator/rerun.py
        "store.root": "the cluster's shared store (PREMEM_STORE_ROOT)",
        "tracking.uri": "the cluster's tracking server (MLFLOW_TRACKING_URI)",
        "train.resources_per_worker": "the Ray resource that marks the training nodes",
        "sampler.resources_per_actor": "the Ray resource that marks the sampling nodes",
    },
}


def _preset_fields(path) -> tuple:
    """(the `# @package` line's package or None, the dotted fields the preset sets, its defaults list)."""
    text = path.read_text()
    package = next((line.split()[2] for line in text.splitlines() if line.startswith("# @package")), None)
    tree = OmegaConf.to_container(OmegaConf.load(path))
    defaults = tree.pop("defaults", [])

    def leaves(node, prefix):
        if isinstance(node, dict) and node:
            return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
        return [prefix[:-1]]

    own = "" if package == "_global_" else f"{path.parent.name}."
    return package, leaves(tree, own) if tree else [], defaults


def _covered(field: str, allowed) -> bool:
    return any(field == a or field.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("group,option", _every_group_option())
def test_every_preset_keeps_its_groups_package_and_sets_only_its_own_fields(group, option):
    """One package per group; a preset sets its own group's fields plus, in the _global_ groups, only the
    listed ones; a preset's defaults list names presets of its own group only (a cluster that picked train=gpu
    would change what runs); τ is the task's, set by no other preset."""
    from orchestrator.config import CONF_DIR

    package, fields, defaults = _preset_fields(CONF_DIR / group / f"{option}.yaml")
    assert package == ("_global_" if group in GLOBAL_GROUPS else None), (group, option, package)
    allowed = [group, *GLOBAL_GROUPS.get(group, {})]
    assert [f for f in fields if not _covered(f, allowed)] == [], f"{group}/{option} sets fields of other groups"
    assert all(isinstance(entry, str) and "/" not in entry and "override" not in entry
               for entry in defaults), (group, option, defaults)
    assert group == "task" or not any(f.endswith("nll_threshold") for f in fields), "τ is set in task presets only"


def test_the_fields_a_preset_sets_beside_its_group_are_listed_in_the_docs_and_a_clusters_are_runtime_fields():
    """The allow-list above is the documented one (docs/config.md names each field), every entry is used by some
    preset (a stale entry fails), and a cluster preset reaches nothing that changes what a trial computes."""
    from orchestrator.config import CONF_DIR
    from orchestrator.rerun import RUNTIME_FIELDS

    docs = (CONF_DIR.parent / "docs" / "config.md").read_text()
    for group, allowed in GLOBAL_GROUPS.items():
        used = {f for preset in (CONF_DIR / group).glob("*.yaml") for f in _preset_fields(preset)[1]}
        for field in allowed:
            assert f"`{field}`" in docs, f"docs/config.md does not name {field}, which {group} presets set"
            assert any(_covered(f, [field]) for f in used), f"no {group} preset sets {field}"
    assert all(_covered(field, RUNTIME_FIELDS) for field in GLOBAL_GROUPS["cluster"])


@pytest.mark.parametrize("cluster", ["local", "ray", "compose", "kuberay"])
def test_where_it_runs_never_changes_what_runs(cluster, monkeypatch):
    """Composed, cluster=X differs from the default config only in cluster.*, the store and tracking locations
    and the node groups' Ray resources: no train, sampler, sweep, task or model field (a `defaults: override
    /sweep: gpu` in a cluster preset fails here)."""
    monkeypatch.setenv("PREMEM_STORE_ROOT", "/tmp/premem-store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    def flat(cfg):
        return {k: v for k, v in _flatten(OmegaConf.to_container(cfg, resolve=True)).items()}

    base, placed = flat(compose_config([])), flat(compose_config([f"cluster={cluster}"]))
    changed = {k for k in base.keys() | placed.keys() if base.get(k, "<unset>") != placed.get(k, "<unset>")}
    assert {k for k in changed if not _covered(k, ["cluster", *GLOBAL_GROUPS["cluster"]])} == set()
    assert (cluster in ("compose", "kuberay")) == bool({k for k in changed if k.startswith(("train.", "sampler."))})


def _flatten(node, prefix=""):
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def test_the_eta_follows_the_recent_pace_of_evaluation():
    """Samplers share the CPUs with training and speed up when it ends: the ETA follows the last few
    evaluations, not the sweep's mean; a resumed sweep's earlier evaluations do not count as instant ones."""
    from orchestrator import schedule

    progress = schedule.Progress(total_trials=6, expected_checkpoints=44, started=0.0)
    assert "ETA   ?  " in progress.line(now=100.0)
    for i in range(1, 9):  # while trials train: one checkpoint a minute
        progress.evaluated += 1
        progress.came_back(1, now=60.0 * i)
    assert "ETA 36.0m" in progress.line(now=480.0)  # 36 left at 60 s each
    for i in range(1, 9):  # training over: one every 15 s
        progress.evaluated += 1
        progress.came_back(1, now=480.0 + 15.0 * i)
    assert "ETA  7.0m" in progress.line(now=600.0)  # 28 left at 15 s each, not at the mean of 37.5 s
    assert "ETA 14.0m" in progress.line(now=720.0)  # two minutes with none back: the pace halves

    resumed = schedule.Progress(total_trials=6, expected_checkpoints=44, started=1000.0, evaluated=40)
    assert "ETA   ?  " in resumed.line(now=1010.0)
    resumed.evaluated += 1
    resumed.came_back(1, now=1030.0)
    assert "ETA  1.5m" in resumed.line(now=1030.0)  # 3 left at 30 s, not 3 x 30 s / 41


def test_rays_start_up_warnings_go_to_the_sweeps_log_not_the_terminal(monkeypatch, tmp_path, capsys):
    """ray.init warns on a new head (token authentication); with a log directory that line goes to its
    ray_driver.log, as everything Ray logs afterwards does."""
    import logging

    import ray

    from orchestrator import reaper, schedule

    started = []

    def init(**kwargs):
        logging.getLogger("ray._private.authentication.authentication_token_setup").warning(
            "Token authentication is enabled for this Ray cluster.")
        started.append(kwargs)

    monkeypatch.setattr(ray, "is_initialized", lambda: bool(started))
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(reaper, "start", lambda session_dir: None)
    node = type("Node", (), {"get_session_dir_path": lambda self: str(tmp_path / "session")})()
    monkeypatch.setattr(ray._private.worker, "_global_node", node, raising=False)
    monkeypatch.setattr(schedule, "_link_ray_logs", lambda log_dir: None)
    monkeypatch.setattr(schedule, "job_env", lambda: {})
    loggers = {name: logging.getLogger(name) for name in ("ray", "ray.tune", "ray.train", "ray.data")}
    for name, logger in loggers.items():
        monkeypatch.setattr(logger, "handlers", [logging.StreamHandler()])  # as Ray sets them up on import
        monkeypatch.setattr(logger, "propagate", False)
    schedule.init_ray(None, 1, 0, tmp_path / "logs")
    assert started
    out, err = capsys.readouterr()
    assert "Token authentication" not in out + err
    for handler in loggers["ray"].handlers:
        handler.flush()
    assert "Token authentication" in (tmp_path / "logs" / "ray_driver.log").read_text()
