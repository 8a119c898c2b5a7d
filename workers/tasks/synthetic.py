"""The built-in offline task: seeded multi-step arithmetic word problems in GSM8k's answer style.

Every problem has several equally valid reasoning traces (different step order and phrasing); the
reference solution is one of them, drawn at random. A model that solves the problem may write any
trace, while a model that memorized the reference reproduces that exact one — which is what makes the
reference NLL a memorization signal rather than a correctness signal.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from workers.tasks.example import Example, Splits, disjoint_splits, distinct_examples
from workers.tasks.registry import register_task

GRADER = "gsm8k"  # answers end in GSM8k's '#### N'
PRONOUN = {"Ava": "she", "Ben": "he", "Cara": "she", "Dan": "he", "Eli": "he", "Fay": "she", "Gus": "he",
           "Hana": "she", "Ivan": "he", "Jo": "she", "Kim": "she", "Leo": "he", "Mia": "she", "Noa": "she",
           "Omar": "he", "Pia": "she", "Raj": "he", "Sam": "he", "Tess": "she", "Uma": "she"}
NAMES = sorted(PRONOUN)
ITEMS = ["apples", "books", "coins", "shells", "stamps", "pens", "cards", "marbles", "stickers", "eggs"]
GAIN = [("buys {n} more {item}", "buying {n}"), ("finds {n} more {item}", "finding {n}"),
        ("gets {n} {item} from a friend", "getting {n}")]
LOSS = [("gives away {n} {item}", "giving away {n}"), ("loses {n} {item}", "losing {n}"),
        ("sells {n} {item}", "selling {n}")]


@dataclass(frozen=True)
class Problem:
    name: str
    item: str
    start: int
    changes: tuple[tuple[int, int], ...]  # (signed amount, phrase index)

    @property
    def answer(self) -> int:
        return self.start + sum(c for c, _ in self.changes)


def _phrase(change: tuple[int, int], item: str, form: int) -> str:
    amount, which = change
    table = GAIN if amount > 0 else LOSS
    return table[which][form].format(n=abs(amount), item=item)


def question_text(p: Problem) -> str:
    steps = [_phrase(c, p.item, 0) for c in p.changes]
    actions = ". Then ".join(f"{PRONOUN[p.name]} {s}" for s in steps)
    return f"{p.name} has {p.start} {p.item}. {actions[0].upper()}{actions[1:]}. How many {p.item} does {p.name} have now?"


def _running(p: Problem) -> list[tuple[int, int, int]]:
    """(before, change, after) for each step in question order."""
    out, total = [], p.start
    for c, _ in p.changes:
        out.append((total, c, total + c))
        total += c
    return out


def _eq(a: int, c: int) -> str:
    return f"{a} + {c} = {a + c}" if c > 0 else f"{a} - {-c} = {a + c}"


def traces(p: Problem, final_answer: bool = True) -> list[str]:
    """All valid reasoning traces for a problem, each ending in GSM8k's '#### N' line (unless not asked)."""
    steps = _running(p)
    narrative = f"{p.name} starts with {p.start} {p.item}. " + " ".join(
        f"After {_phrase((c, w), p.item, 1)} there are {_eq(a, c)}." for (a, c, _), (_, w) in zip(steps, p.changes))
    terse = " ".join(f"{_eq(a, c)}." for a, c, _ in steps)
    gains = sum(c for c, _ in p.changes if c > 0)
    losses = -sum(c for c, _ in p.changes if c < 0)
    net = gains - losses
    if net >= 0:
        net_line = f"The net change is {gains} - {losses} = {net}. {p.start} + {net} = {p.answer}."
    else:
        net_line = f"The net loss is {losses} - {gains} = {-net}. {p.start} - {-net} = {p.answer}."
    totals = f"In total {p.name} gains {gains} and loses {losses}. " + net_line
    out = [narrative, terse, totals]
    return [f"{t}\n#### {p.answer}" if final_answer else t for t in out]


def make_problem(rng: random.Random, min_steps: int, max_steps: int, max_number: int) -> Problem:
    n_steps = rng.randint(min_steps, max_steps)
    start = rng.randint(max_number // 2, max_number)
    total, changes = start, []
    for _ in range(n_steps):
        if total > 1 and rng.random() < 0.5:
            amount = -rng.randint(1, min(total - 1, max_number))
        else:
            amount = rng.randint(1, max_number)
        changes.append((amount, rng.randrange(3)))
        total += amount
    return Problem(rng.choice(NAMES), rng.choice(ITEMS), start, tuple(changes))


def make_examples(seed: int, n: int, prefix: str, min_steps: int = 2, max_steps: int = 3,
                  max_number: int = 20, exclude: set[str] | None = None, final_answer: bool = True) -> list[Example]:
    """n distinct problems (by question text), each with one randomly chosen trace as its reference.

    final_answer=False drops the '#### N' line: the base stage's text, so that the base model can do the
    arithmetic but does not know the dataset's answer format, as a pretrained LLM before finetuning.
    """
    rng = random.Random(f"{prefix}:{seed}")

    def draw():
        problem = make_problem(rng, min_steps, max_steps, max_number)
        return question_text(problem), lambda: (rng.choice(traces(problem, final_answer)), str(problem.answer))

    return distinct_examples(n, prefix, draw, exclude)


@register_task("synthetic", generated=True, grader=GRADER)
def make_splits(seed: int, n_train: int, n_test: int, min_steps: int = 2, max_steps: int = 3,
                max_number: int = 20) -> Splits:
    """Disjoint seeded train/test splits of the synthetic task."""
    return disjoint_splits(make_examples, seed, n_train, n_test, GRADER, min_steps=min_steps,
                           max_steps=max_steps, max_number=max_number)


# ------------------------------------------------------------------------------------ curation
_STEP_FORMS = [(sign, which, re.compile("^" + re.escape(form).replace(r"\{n\}", r"(?P<n>\d+)")
                                        .replace(r"\{item\}", r"(?P<item>\w+)") + "$"))
               for sign, table in ((1, GAIN), (-1, LOSS)) for which, (form, _) in enumerate(table)]
# the question's frame (name, start, item, the steps): the skills task writes its questions in it too
QUESTION_FRAME = re.compile(r"^(?P<name>\w+) has (?P<start>\d+) (?P<item>\w+)\. (?P<actions>.+)\. "
                       r"How many (?P=item) does (?P=name) have now\?$")


def parse_problem(question: str) -> Problem:
    """The Problem a question of this task was written from (question_text's inverse); ValueError if the
    question is not in this task's format."""
    found = QUESTION_FRAME.match(question)
    if not found or found["name"] not in PRONOUN:
        raise ValueError(f"not a synthetic-task question: {question[:80]!r}")
    changes = []
    for action in found["actions"].split(". Then "):
        pronoun, _, phrase = action.partition(" ")
        step = next(((sign * int(m["n"]), which) for sign, which, form in _STEP_FORMS
                     if (m := form.match(phrase)) and m["item"] == found["item"]), None)
        if pronoun.lower() != PRONOUN[found["name"]] or step is None:
            raise ValueError(f"not a synthetic-task step: {action[:80]!r}")
        changes.append(step)
    return Problem(found["name"], found["item"], int(found["start"]), tuple(changes))


def similar_problem(rng: random.Random, like: Problem) -> Problem:
    """A new problem with `like`'s structure: as many steps, each of the same kind (gain or loss, and the same
    phrasing), numbers in the same range (up to its largest number); name, item and numbers drawn anew."""
    max_number = max(like.start, *(abs(c) for c, _ in like.changes))
    while True:
        start = rng.randint(max(1, max_number // 2), max_number)
        total, changes = start, []
        for amount, which in like.changes:
            if amount > 0:
                step = rng.randint(1, max_number)
            elif total > 1:
                step = -rng.randint(1, min(total - 1, max_number))
            else:
                break  # nothing left to lose: draw the numbers again
            changes.append((step, which))
            total += step
        if len(changes) == len(like.changes):
            return Problem(rng.choice(NAMES), rng.choice(ITEMS), start, tuple(changes))


def new_examples(seed: int, prefix: str, likes: list[Example | None], exclude: set[str], min_steps: int = 2,
                 max_steps: int = 3, max_number: int = 20) -> list[Example]:
    """One new example per entry of `likes`: a problem similar to that example (`similar_problem`), or, for
    None, one drawn from the task's own distribution (i.i.d.). No question repeats one in `exclude` (the
    task's train and test questions) or another new one; each reference is a random valid trace."""
    rng = random.Random(f"{prefix}:{seed}")
    seen = set(exclude)
    out: list[Example] = []
    for like in likes:
        shape = parse_problem(like.question) if like is not None else None
        while True:
            problem = (similar_problem(rng, shape) if shape is not None
                       else make_problem(rng, min_steps, max_steps, max_number))
            question = question_text(problem)
            if question not in seen:
                break
        seen.add(question)
        out.append(Example(f"{prefix}-{len(out)}", question, rng.choice(traces(problem)), str(problem.answer)))
    return out
