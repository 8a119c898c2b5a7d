"""GSM8k and MATH: from local JSONL files (GSM8k `question`/`answer`, MATH `problem`/`solution`), or from
the HF hub through `datasets` when it is installed and reachable."""
from __future__ import annotations

import json
from pathlib import Path

from workers.grading import gold_answer_gsm8k, gold_answer_math
from workers.tasks.example import Example, Splits
from workers.tasks.registry import register_task

FIELDS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}
HUB = {"gsm8k": ("openai/gsm8k", "main"), "math": ("hendrycks/competition_math", None)}


class DatasetFileError(ValueError):
    """A dataset file that cannot be used; the message names the file and line."""


def read_jsonl(name: str, path: str | Path, split: str, limit: int) -> list[Example]:
    question_key, solution_key = FIELDS[name]
    gold = gold_answer_gsm8k if name == "gsm8k" else gold_answer_math
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"{path}: no such dataset file")
    out: list[Example] = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, solution = row[question_key], row[solution_key]
                answer = gold(solution)
            except json.JSONDecodeError as exc:
                raise DatasetFileError(f"{path}: line {line_no}: not JSON ({exc.msg})") from None
            except KeyError as exc:
                raise DatasetFileError(f"{path}: line {line_no}: missing field {exc.args[0]!r}") from None
            except ValueError as exc:
                raise DatasetFileError(f"{path}: line {line_no}: {exc}") from None
            out.append(Example(str(row.get("id", f"{split}-{len(out)}")), question, solution, answer))
            if limit and len(out) >= limit:
                break
    if not out:
        raise DatasetFileError(f"{path}: no examples")
    return out


ADDED_FIELDS = ("example_id", "question", "solution", "answer")


def read_added(location: str) -> list[Example]:
    """Curated train examples (a JSONL file in the store, one Example per line, written by
    orchestrator.curate): the file is read whole, so it may live in an object store."""
    from store import io

    out: list[Example] = []
    for line_no, line in enumerate(io.read_text(location).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Example(*(str(row[k]) for k in ADDED_FIELDS)))
        except json.JSONDecodeError as exc:
            raise DatasetFileError(f"{location}: line {line_no}: not JSON ({exc.msg})") from None
        except KeyError as exc:
            raise DatasetFileError(f"{location}: line {line_no}: missing field {exc.args[0]!r}") from None
    return out


def _from_hub(name: str, split: str, limit: int) -> list[Example]:
    try:
        import datasets  # optional: only where the hub is reachable
    except ImportError:
        raise DatasetFileError(f"task {name}: give task.path (a local JSONL file); `datasets` is not installed") from None
    repo, config = HUB[name]
    rows = datasets.load_dataset(repo, config, split=split)
    question_key, solution_key = FIELDS[name]
    gold = gold_answer_gsm8k if name == "gsm8k" else gold_answer_math
    out = [Example(f"{split}-{i}", r[question_key], r[solution_key], gold(r[solution_key]))
           for i, r in enumerate(rows)]
    return out[:limit] if limit else out


def load_splits(name: str, path: str | None, test_path: str | None, n_train: int, n_test: int) -> Splits:
    """Train from `path` and test from `test_path` (or the hub's train/test splits)."""
    train = read_jsonl(name, path, "train", n_train) if path else _from_hub(name, "train", n_train)
    test = read_jsonl(name, test_path, "test", n_test) if test_path else _from_hub(name, "test", n_test)
    return Splits(train, test, name)


@register_task("gsm8k", generated=False, grader="gsm8k")
def load_gsm8k(path: str | None, test_path: str | None, n_train: int, n_test: int) -> Splits:
    return load_splits("gsm8k", path, test_path, n_train, n_test)


@register_task("math", generated=False, grader="math")
def load_math(path: str | None, test_path: str | None, n_train: int, n_test: int) -> Splits:
    return load_splits("math", path, test_path, n_train, n_test)
