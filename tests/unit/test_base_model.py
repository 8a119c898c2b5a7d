"""The base model's key: one definition of what the model every trial starts from depends on; and the packages
its build file records."""
import json

from orchestrator.config import compose_config
from orchestrator.plan import expand_grid
from store.layout import base_model_dir
from workers.base_model import base_model_key


def test_the_key_names_the_directories_of_base_models_cached_before():
    """A store's cached base models stay reused: the default config and the built-in tasks hash as they did."""
    cfg = compose_config([])
    assert base_model_key(cfg.model, cfg.task) == {
        "stage": {"n_examples": 6000, "epochs": 4, "lr": 3e-3, "batch_size": 32, "vocab_size": 512, "hidden_size": 128,
                  "num_layers": 4, "num_heads": 4, "max_positions": 256, "seed": 1234, "final_answer": False},
        "task": {"min_steps": 2, "max_steps": 3, "max_number": 10},  # no name: synthetic's key predates the others
        "prompt": {"question_suffix": "\nAnswer:", "stop": "\nDone."}, "v": 2}
    for task, directory in (("synthetic", "bee3c00cdb8b"), ("skills", "14a973bc9c13"), ("choices", "6ea0c1821f8e")):
        cfg = compose_config([f"task={task}"])
        assert base_model_dir("/s", base_model_key(cfg.model, cfg.task)) == f"/s/base_models/{directory}"


def test_a_trial_spec_and_the_composed_config_give_one_key():
    """The driver keys the sweep's config (a DictConfig) and each trial's (a dataclass) the same way, so a sweep
    builds each distinct base model once."""
    cfg = compose_config(["task=skills"])
    specs = expand_grid(cfg, "x")
    keys = {json.dumps(base_model_key(s.config.model, s.config.task), sort_keys=True) for s in specs}
    assert keys == {json.dumps(base_model_key(cfg.model, cfg.task), sort_keys=True)}


def test_only_what_changes_the_weights_changes_the_key():
    key = base_model_key(compose_config([]).model, compose_config([]).task)
    for override in ("train.lr=0.01", "task.seed=3", "task.n_train=64", "task.train_fraction=0.5", "model.name=x",
                     "sampler.k=2", "seed=7"):
        cfg = compose_config([override])
        assert base_model_key(cfg.model, cfg.task) == key, override
    for override in ("model.base_stage.seed=5", "task.max_steps=4", "task.stop=END", "task=skills"):
        cfg = compose_config([override])
        assert base_model_key(cfg.model, cfg.task) != key, override


def test_a_given_model_is_keyed_by_its_path():
    cfg = compose_config(["model.path=/models/x"])
    assert base_model_key(cfg.model, cfg.task) == {"path": "/models/x"}


def test_a_cached_base_model_built_with_other_packages_is_named(tmp_path):
    """The build file records the packages' versions; reusing the model under other versions says which differ
    (the same seed gives other weights there), and a model whose build file predates the record says nothing."""
    from orchestrator.sweep import base_model_package_changes
    from workers.base_model import BUILD_FILE
    from workers.models import package_changes, package_versions

    now = package_versions()
    assert {"torch", "transformers", "tokenizers", "numpy"} <= set(now)
    (tmp_path / BUILD_FILE).write_text(json.dumps({"steps": 1, "packages": now}))
    assert base_model_package_changes(str(tmp_path)) == []
    (tmp_path / BUILD_FILE).write_text(json.dumps({"steps": 1, "packages": {**now, "transformers": "4.0.0"}}))
    assert base_model_package_changes(str(tmp_path)) == [f"transformers 4.0.0 -> {now['transformers']}"]
    (tmp_path / BUILD_FILE).write_text(json.dumps({"steps": 1}))
    assert base_model_package_changes(str(tmp_path)) == []
    assert package_changes({"vllm": "0.1"}, {}) == ["vllm 0.1 -> none"]
