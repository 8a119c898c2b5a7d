"""Tasks: examples (question, reference solution, gold answer) and the prompt format around them."""
from __future__ import annotations

from workers.tasks.example import Example, PromptFormat, Splits, subsample_train

__all__ = ["Example", "PromptFormat", "Splits", "GENERATED", "TASK_ARGS", "generator", "load_task", "task_args"]

# The built-in tasks, generated offline from a seed (each module: make_examples, make_splits, new_examples for
# curation, parse_problem); gsm8k and math are read from files.
GENERATED = {"synthetic": "workers.tasks.synthetic", "skills": "workers.tasks.skills",
             "choices": "workers.tasks.choices"}


def generator(name: str):
    """The module that generates built-in task `name`."""
    import importlib

    return importlib.import_module(GENERATED[name])


TASK_ARGS = ("name", "seed", "train_fraction", "n_train", "n_test", "min_steps", "max_steps", "max_number",
             "path", "test_path", "added_path")


def task_args(task) -> dict:
    """The keyword arguments of `load_task` picked from a task config (a dict, DictConfig or the TaskConfig
    dataclass); a config stored before a field existed gets its default."""
    return {k: task.get(k) if isinstance(task, dict) else getattr(task, k, None) for k in TASK_ARGS}


def load_task(name: str, *, seed: int, train_fraction: float, n_train: int, n_test: int,
              path: str | None = None, test_path: str | None = None, added_path: str | None = None,
              **difficulty) -> Splits:
    """Build or read the task's splits; train_fraction subsamples the train split (seeded), and the examples
    of `added_path` (curation's new data) join the train split after that."""
    if name in GENERATED:
        splits = generator(name).make_splits(seed=seed, n_train=n_train, n_test=n_test, **difficulty)
    elif name in ("gsm8k", "math"):
        from workers.tasks.jsonl import load_splits

        splits = load_splits(name, path=path, test_path=test_path, n_train=n_train, n_test=n_test)
    else:
        raise ValueError(f"unknown task {name!r}")
    splits = subsample_train(splits, train_fraction, seed)
    if added_path:
        from workers.tasks.jsonl import read_added

        splits = Splits(splits.train + read_added(added_path), splits.test, splits.grader)
    return splits
