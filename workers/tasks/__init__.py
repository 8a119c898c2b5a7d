"""Tasks: examples (question, reference solution, gold answer) and the prompt format around them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    example_id: str
    question: str
    solution: str  # the reference solution, in the task's answer style (ends with its final answer)
    answer: str  # the gold final answer, as the grader compares it


@dataclass(frozen=True)
class PromptFormat:
    """question + suffix is the prompt; " " + solution + stop is the training target."""

    question_suffix: str = "\nAnswer:"
    stop: str = "\nDone."
    answer_prefix: str = ""  # a prompt variant: text the answer is forced to start with

    def prompt(self, question: str) -> str:
        return question + self.question_suffix + (" " + self.answer_prefix if self.answer_prefix else "")

    def target(self, solution: str) -> str:
        return " " + solution + self.stop


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    test: list[Example]
    grader: str  # "gsm8k" or "math": which grading function applies


TASK_ARGS = ("name", "seed", "train_fraction", "n_train", "n_test", "min_steps", "max_steps", "max_number",
             "path", "test_path", "added_path")


def task_args(task) -> dict:
    """The keyword arguments of `load_task` picked from a task config (dict or DictConfig); a config stored
    before a field existed gets its default."""
    return {k: task.get(k) for k in TASK_ARGS}


def load_task(name: str, *, seed: int, train_fraction: float, n_train: int, n_test: int,
              path: str | None = None, test_path: str | None = None, added_path: str | None = None,
              **difficulty) -> Splits:
    """Build or read the task's splits; train_fraction subsamples the train split (seeded), and the examples
    of `added_path` (curation's new data) join the train split after that."""
    if name == "synthetic":
        from workers.tasks.synthetic import make_splits

        splits = make_splits(seed=seed, n_train=n_train, n_test=n_test, **difficulty)
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


def subsample_train(splits: Splits, fraction: float, seed: int) -> Splits:
    if fraction >= 1.0:
        return splits
    import random

    keep = max(1, round(len(splits.train) * fraction))
    rng = random.Random(f"train_fraction:{seed}")
    picked = sorted(rng.sample(range(len(splits.train)), keep))
    return Splits([splits.train[i] for i in picked], splits.test, splits.grader)
