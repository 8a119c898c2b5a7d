"""Tasks: examples (question, reference solution, gold answer) and the prompt format around them."""
from __future__ import annotations

from workers.tasks.example import Example, PromptFormat, Splits, subsample_train
from workers.tasks.registry import TASKS, TaskEntry, register_task

# The built-in tasks, each registering itself (workers/tasks/registry.py): synthetic, skills and choices are
# generated offline from a seed (each module: make_examples, make_splits, new_examples for curation,
# parse_problem); gsm8k and math are read from files (jsonl.py).
from workers.tasks import synthetic, skills, choices, jsonl  # noqa: E402,F401  (registration order: synthetic first)

__all__ = ["Example", "PromptFormat", "Splits", "TASKS", "TASK_ARGS", "TaskEntry", "generated_tasks",
           "generator", "load_task", "register_task", "task_args"]


def generated_tasks() -> dict[str, str]:
    """The registered tasks built offline from a seed, name -> generator module, in registration order."""
    return {name: entry.module for name, entry in TASKS.items() if entry.generated}



def generator(name: str):
    """The module that generates task `name` (KeyError: not a generated task)."""
    import importlib

    if not TASKS[name].generated:
        raise KeyError(name)
    return importlib.import_module(TASKS[name].module)


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
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}")
    entry = TASKS[name]
    if entry.generated:
        splits = entry.load(seed=seed, n_train=n_train, n_test=n_test, **difficulty)
    else:
        splits = entry.load(path=path, test_path=test_path, n_train=n_train, n_test=n_test)
    splits = subsample_train(splits, train_fraction, seed)
    if added_path:
        from workers.tasks.jsonl import read_added

        splits = Splits(splits.train + read_added(added_path), splits.test, splits.grader)
    return splits
