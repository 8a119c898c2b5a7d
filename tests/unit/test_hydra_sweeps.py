"""Hydra's sweep syntax as one premem sweep: `-m a=1,2`, range(), choice(), glob(), config groups and
hydra.sweeper.params expand to the trials of ONE plan (premem's Sweeper plugin); bad input is one line, exit 2."""
import subprocess
import sys
import zipfile
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from orchestrator.__main__ import main
from orchestrator.sweep import plan_sweep
from orchestrator.sweep import plan
from tests.conftest import REPO


def test_two_swept_fields_make_one_plan_of_their_product():
    cfg, sweep_id, specs = plan(["-m", "sweep=small", "seed=0,1", "train.lr=1e-3,3e-3"])
    assert [s.grid_values for s in specs] == [{"seed": 0, "train.lr": 1e-3}, {"seed": 0, "train.lr": 3e-3},
                                              {"seed": 1, "train.lr": 1e-3}, {"seed": 1, "train.lr": 3e-3}]
    assert [(s.config.seed, s.config.train.lr) for s in specs] == [(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)]
    assert len({s.run_id for s in specs}) == 4 and all(s.run_id.startswith(sweep_id) for s in specs)
    assert cfg.sweep.name == "small" and "hydra" not in cfg


def test_the_hydra_spelling_and_the_grid_spelling_give_the_same_trials():
    _, _, hydra_specs = plan(["-m", "sweep=small", "train.lr=1e-3,3e-3"])
    _, _, grid_specs = plan_sweep(["sweep=small"])  # sweep.grid.train.lr: [1e-3, 3e-3]
    strip = lambda c: replace(c, sweep=replace(c.sweep, grid=None))  # noqa: E731  the grid itself differs
    assert [strip(s.config) for s in hydra_specs] == [strip(s.config) for s in grid_specs]
    assert [s.grid_values for s in hydra_specs] == [s.grid_values for s in grid_specs]


def test_range_choice_glob_and_config_groups():
    _, _, specs = plan(["-m", "sweep=small", "~sweep.grid.train", "seed=range(1,3)", "train=glob(cpu)", "sampler.k=choice(2,4)"])
    assert [(s.config.seed, s.config.sampler.k) for s in specs] == [(1, 2), (1, 4), (2, 2), (2, 4)]
    assert specs[0].grid_values == {"seed": 1, "train": "cpu", "sampler.k": 2}
    _, _, groups = plan(["-m", "sweep=small", "~sweep.grid.train", "train=cpu,gpu", "train.num_workers=1",
                         "train.global_batch_size=8"])
    assert [(s.grid_values["train"], s.config.train.zero_stage) for s in groups] == [("cpu", 2), ("gpu", 3)]


def test_a_preset_declares_its_grid_in_hydra_sweeper_params_and_needs_no_m(capsys):
    """sweep=lr_seeds declares train.lr x seed in hydra.sweeper.params; without -m it is still that sweep, and a
    command-line sweep of one of its keys replaces that axis."""
    assert main(["sweep=lr_seeds", "--plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: 4 trials") and "lr=0.003 seed=1" in out
    _, _, specs = plan(["sweep=lr_seeds", "seed=range(3)"])
    assert len(specs) == 6 and {s.config.seed for s in specs} == {0, 1, 2}


def test_a_swept_field_replaces_its_grid_axis_and_linked_axes_stay():
    _, _, specs = plan(["-m", "train.lr=1e-4,1e-3"])  # the default sweep: lr x a linked data regime
    assert len(specs) == 6 and {s.config.train.lr for s in specs} == {1e-4, 1e-3}
    assert {(s.config.task.train_fraction, s.config.train.epochs) for s in specs} == {
        (1.0, 3), (0.25, 12), (0.125, 24)}


# ------------------------------------------------------------------ the command line wins over a preset's grid
def test_a_plain_override_of_a_grid_field_replaces_its_axis(capsys):
    """conf/config.yaml's own example: `train.lr=3e-3 sweep=small` is ONE trial at lr 3e-3 (sweep=small's grid
    sweeps train.lr); the printed config's grid no longer has the axis, and the run id says no lr."""
    cfg, _, specs = plan(["train.lr=3e-3", "sweep=small"])
    assert [(s.config.train.lr, s.grid_values) for s in specs] == [(3e-3, {})]
    assert OmegaConf.to_container(cfg.sweep.grid) == {}
    assert main(["train.lr=3e-3", "sweep=small", "--plan"]) == 0
    assert capsys.readouterr().out.startswith("plan: 1 trial")


def test_under_the_default_grid_only_the_overridden_axis_goes():
    """The default grid is lr x a linked data regime: `train.lr=3e-3` leaves the three regimes, all at 3e-3;
    spelled `++train.lr=` alike, with or without -m."""
    for argv in (["train.lr=3e-3"], ["++train.lr=3e-3"], ["-m", "train.lr=3e-3"]):
        _, _, specs = plan(argv)
        assert {s.config.train.lr for s in specs} == {3e-3}, argv
        assert [(s.config.task.train_fraction, s.config.train.epochs) for s in specs] == [
            (1.0, 3), (0.25, 12), (0.125, 24)], argv


def test_a_plain_override_beside_a_hydra_sweep_replaces_its_axis_too():
    _, _, specs = plan(["-m", "sweep=small", "train.lr=3e-3", "seed=0,1"])
    assert [(s.config.seed, s.config.train.lr) for s in specs] == [(0, 3e-3), (1, 3e-3)]
    assert [s.grid_values for s in specs] == [{"seed": 0}, {"seed": 1}]


def test_group_choices_and_grid_edits_are_not_field_overrides():
    """`train=cpu` chooses a config group (it is not the field train.lr); `sweep.grid.*` spells the grid itself:
    neither drops an axis."""
    _, _, specs = plan(["sweep=small", "train=cpu"])
    assert [s.config.train.lr for s in specs] == [1e-3, 3e-3]
    _, _, specs = plan(["sweep=small", "sweep.grid.train.lr=[3e-4,1e-3,3e-3]"])
    assert [s.config.train.lr for s in specs] == [3e-4, 1e-3, 3e-3]
    _, _, specs = plan(["~sweep.grid.regime", "train.epochs=2"])  # the linked axis dropped: the field is free
    assert {s.config.train.epochs for s in specs} == {2} and len(specs) == 2


@pytest.mark.parametrize("argv,message", [
    (["train.epochs=1"],  # the default grid's linked axis sets train.epochs in each of its values
     "error: train.epochs: set on the command line and by the linked axis sweep.grid.regime; drop one "
     "(e.g. ~sweep.grid.regime, or give train.epochs in each of the axis's values)"),
    (["-m", "task.train_fraction=0.5", "seed=0,1"],
     "error: task.train_fraction: set on the command line and by the linked axis sweep.grid.regime"),
    (["sweep=small", "train.lr=3e-3", "sweep.grid.train.lr=[1e-3,3e-3]"],  # both spellings at once: which?
     "error: train.lr: given twice on the command line, as train.lr=3e-3 and as sweep.grid.train.lr=[1e-3,3e-3]; "
     "keep one"),
])
def test_a_plain_override_the_grid_cannot_take_is_refused_in_one_line(tmp_path, capsys, argv, message):
    store = tmp_path / "store"
    assert main([*argv, f"store.root={store}", "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not store.exists()


@pytest.mark.parametrize("argv,message", [
    (["-m", "sweep=small", "train.lr=interval(0.1,1)"],
     "error: train.lr=interval(0.1,1): an interval sweep needs a search algorithm; premem sweeps grids"),
    (["-m", "train.epochs=1,2"],
     "error: train.epochs: swept on the command line (or hydra.sweeper.params) and set by the linked axis "
     "sweep.grid.regime"),
    (["-m", "sweep=small", "train.nope=1,2"], "error: train.nope: Key 'nope' not in 'TrainConfig'"),
    (["-m", "sweep=small", "train.lr=1e-3,-1"], "error: sweep job 1 (train.lr=-1): train.lr=-1.0: must be > 0"),
    (["-m", "sweep=small", "model=tiny,nope"], "error: In 'config': Could not find 'model/nope'"),
    (["sweep=small", "train.lr=1e-3,abc"], "error: train.lr: Value 'abc' of type 'str' could not be converted"),
])
def test_bad_sweeps_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    store = tmp_path / "store"
    assert main([*argv, f"store.root={store}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not store.exists()


def test_cfg_prints_the_base_config_of_a_sweep(capsys):
    assert main(["-m", "sweep=small", "train.lr=1e-3,3e-3", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "sweep:\n  name: small" in out and "hydra" not in out


# ----------------------------------------------------------------------- plugin discovery, as users install
DISCOVER = ("import json, hydra_plugins.premem_sweeper as p, orchestrator; "
            "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
            "print(json.dumps([[c.__name__ for c in Plugins.instance().discover(Sweeper)], p.__file__, orchestrator.__file__]))")


def discovered(python: str, cwd) -> tuple[list[str], str, str]:
    import json

    out = subprocess.run([python, "-c", DISCOVER], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return tuple(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_sweeper_is_discovered_from_the_editable_install(tmp_path):
    """`pip install -e .` (make setup) with current setuptools: the editable finder serves the hydra_plugins
    namespace; run from outside the repository, so the checkout is not simply on sys.path."""
    sweepers, plugin_file, _ = discovered(sys.executable, tmp_path)
    assert "PrememSweeper" in sweepers and plugin_file.startswith(str(REPO))


@pytest.mark.slow  # builds a wheel: ~20 s
def test_the_sweeper_is_discovered_from_a_wheel_install(tmp_path):
    """A regular wheel installed into a fresh environment that sees the dependencies but not the editable
    install: the wheel carries hydra_plugins/premem_sweeper and Hydra finds the sweeper there."""
    import sysconfig

    import shutil

    source = tmp_path / "source"  # setuptools writes build/ beside the sources: a copy keeps the checkout clean
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copy(REPO / "README.md", source)
    for package in ("orchestrator", "workers", "analysis", "hydra_plugins"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("premem-*.whl")
    assert any(n.startswith("hydra_plugins/premem_sweeper/") for n in zipfile.ZipFile(wheel).namelist())
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    site = next(env.glob("lib/python3*/site-packages"))
    # the dependencies from this environment's site-packages, whose .pth files (the editable finder) stay unread
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    sweepers, plugin_file, orchestrator_file = discovered(str(env / "bin" / "python"), tmp_path)
    assert "PrememSweeper" in sweepers
    assert plugin_file.startswith(str(site)) and orchestrator_file.startswith(str(site))
