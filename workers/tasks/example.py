"""What a task is made of: examples (question, reference solution, gold answer), the train/test splits and
the prompt format around them. Every task module builds these; the trainer and the samplers read them."""
from __future__ import annotations

from collections.abc import Callable
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


def subsample_train(splits: Splits, fraction: float, seed: int) -> Splits:
    if fraction >= 1.0:
        return splits
    import random

    keep = max(1, round(len(splits.train) * fraction))
    rng = random.Random(f"train_fraction:{seed}")
    picked = sorted(rng.sample(range(len(splits.train)), keep))
    return Splits([splits.train[i] for i in picked], splits.test, splits.grader)


def distinct_examples(n: int, prefix: str, draw: Callable[[], tuple[str, Callable[[], tuple[str, str]]]],
                      exclude: set[str] | None = None) -> list[Example]:
    """n examples with distinct questions, none in `exclude`. `draw()` gives a question and a function that
    writes its (reference solution, gold answer); it is called only for a question kept, so a generator's
    random draws stay in the order that makes its data what it is for a seed."""
    seen = set(exclude or ())
    out: list[Example] = []
    while len(out) < n:
        question, write = draw()
        if question in seen:
            continue
        seen.add(question)
        out.append(Example(f"{prefix}-{len(out)}", question, *write()))
    return out


def disjoint_splits(make_examples: Callable[..., list[Example]], seed: int, n_train: int, n_test: int,
                    grader: str, **difficulty) -> Splits:
    """Seeded test and train splits of one generator, the train questions disjoint from the test ones."""
    test = make_examples(seed, n_test, "test", **difficulty)
    train = make_examples(seed, n_train, "train", exclude={e.question for e in test}, **difficulty)
    return Splits(train, test, grader)
