"""Where a task's name lives: each task module registers itself with `@register_task` (lm-evaluation-harness's
`register_task`, for modules), and everything that asks which tasks exist reads TASKS."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workers.tasks.example import Splits


@dataclass(frozen=True)
class TaskEntry:
    name: str
    module: str  # the module that registered it; a generated task's generator (make_examples, new_examples, ...)
    generated: bool  # built offline from a seed (its tiny base model too); else read from files
    grader: str  # the workers.grading grader of its splits
    # generated: make_splits(seed, n_train, n_test, **difficulty); from files: (path, test_path, n_train, n_test)
    load: Callable[..., Splits]


TASKS: dict[str, TaskEntry] = {}  # in registration order: the order a refusal lists them in


def register_task(name: str, *, generated: bool, grader: str):
    """Decorator: the function that builds (or reads) a task's splits, registered as task `name`."""
    def register(load: Callable[..., Splits]) -> Callable[..., Splits]:
        if name in TASKS and TASKS[name].load is not load:
            raise ValueError(f"task {name!r} is registered twice ({TASKS[name].module}, {load.__module__})")
        TASKS[name] = TaskEntry(name, load.__module__, generated, grader, load)
        return load

    return register
