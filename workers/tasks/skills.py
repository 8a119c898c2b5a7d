"""A built-in offline task with uneven skills and idiosyncratic reference solutions (`task=skills`).

Why it differs from `synthetic` (issue: memorization must be visible, skills uneven):
- Skills. A problem is 2-4 steps, each of one kind: `add` and `sub` (one operation, frequent), `boxes` (a
  product added: two operations), `times` (a multiplication) and `share` (a division), in decreasing frequency
  (SKILLS). A small model learns the frequent one-operation steps early and the rare multiplicative ones late;
  the test split is drawn from the same distribution, so it weights the skills as the train split does.
- Reference solutions carry per-example content that the question does not determine: an opening (or none),
  the name of the running count (a letter), one of several phrasings per step, remarks between steps, a
  closing. A model that solves a problem but has not seen its reference spreads its probability over these
  choices (about 2 nats per step and 5 per solution beyond the arithmetic: `solution_entropy_nats`), so its
  mean per-token NLL of the reference stays well above a memorization threshold of 0.1 nats; one that has
  memorized the reference puts it near 0.
- Curation's generator (`new_examples`) writes new problems of a picked example's skills: the same step kinds
  in the same order, numbers, names and items drawn anew.
Questions keep one phrasing per step kind (parse_problem inverts question_text); answers end in GSM8k's
'#### N' line, so the GSM8k grader applies.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from workers.tasks.example import Example, Splits, disjoint_splits, distinct_examples
from workers.tasks.registry import register_task
from workers.tasks.synthetic import ITEMS, NAMES, PRONOUN, QUESTION_FRAME

GRADER = "gsm8k"  # answers end in GSM8k's '#### N'

# step kind -> share of all steps; the order is of increasing difficulty for a model that has to learn it
SKILLS = {"add": 0.34, "sub": 0.26, "boxes": 0.18, "times": 0.12, "share": 0.10}
MAX_TOTAL = 200  # a step that would take the count above this is drawn again

QUESTION_STEP = {  # one phrasing per kind: the question states the problem, the solution's wording varies
    "add": "{p} finds {n} more {item}",
    "sub": "{p} gives away {n} {item}",
    "boxes": "{p} buys {k} boxes with {n} {item} in each",
    "times": "{p} makes the pile {n} times as big",
    "share": "{p} splits the {item} into {n} equal piles and keeps one pile",
}
SOLUTION_STEP = {  # {v}: the running count's letter; {a}: before; {r}: after
    "add": ["After finding {n} more, {v} = {a} + {n} = {r}.", "{P} finds {n} more, so {v} = {a} + {n} = {r}.",
            "Adding the {n} found {item}: {v} = {a} + {n} = {r}.", "Now {v} = {a} + {n} = {r}, with the {n} new ones.",
            "{n} more {item} make {v} = {a} + {n} = {r}."],
    "sub": ["After giving away {n}, {v} = {a} - {n} = {r}.", "{P} gives {n} away, so {v} = {a} - {n} = {r}.",
            "Taking away the {n} given {item}: {v} = {a} - {n} = {r}.", "Now {v} = {a} - {n} = {r}, {n} fewer.",
            "{n} fewer {item} leave {v} = {a} - {n} = {r}."],
    "boxes": ["{k} boxes of {n} hold {k} x {n} = {m}, so {v} = {a} + {m} = {r}.",
              "The boxes add {k} x {n} = {m} {item}: {v} = {a} + {m} = {r}.",
              "Each of the {k} boxes has {n}, that is {m} more, and {v} = {a} + {m} = {r}.",
              "{P} gets {k} x {n} = {m} from the boxes, so {v} = {a} + {m} = {r}."],
    "times": ["The pile grows {n} times: {v} = {a} x {n} = {r}.", "{n} times as many: {v} = {a} x {n} = {r}.",
              "Multiplying by {n}, {v} = {a} x {n} = {r}.", "{P} now has {n} x {a} = {r}, so {v} = {r}."],
    "share": ["Splitting into {n} piles leaves {v} = {a} / {n} = {r}.",
              "One pile of {n} is {v} = {a} / {n} = {r}.",
              "{P} keeps one of the {n} piles: {v} = {a} / {n} = {r}.",
              "Dividing by {n}, {v} = {a} / {n} = {r}."],
}
OPENINGS = ["", "", "Let's work it out step by step.", "Keep a running count.", "Track the {item} one step at a time.",
            "This is a counting problem.", "Follow the {item} through each change.", "Start from what {name} has.",
            "Write down each change in order."]
NAMING = ["Let {v} be the number of {item}; {v} = {start} at first.", "Call the count {v}. At the start {v} = {start}.",
          "{name} starts with {v} = {start} {item}.", "Start with {v} = {start}."]
REMARKS = ["That checks out.", "So far so good.", "Keep that number in mind.", "This is the new count.",
           "Nothing else changes here.", "Write that down.", "One step done.", "The count keeps moving.",
           "Double-check: it adds up.", "Good."]
REMARK_CHANCE = 0.4
CLOSINGS = ["So {name} ends with {r} {item}.", "The final count is {r}.", "That leaves {r} {item}.",
            "In the end {v} = {r}.", "{name} has {r} {item} now."]
LETTERS = "abcdefghjkmnpqrstuwxyz"


@dataclass(frozen=True)
class Problem:
    name: str
    item: str
    start: int
    steps: tuple[tuple[str, int, int], ...]  # (kind, n, k): k is the box count of `boxes`, else 0

    @property
    def answer(self) -> int:
        return running(self)[-1][1]

    @property
    def skills(self) -> tuple[str, ...]:
        return tuple(kind for kind, _, _ in self.steps)


def apply(kind: str, total: int, n: int, k: int) -> int:
    return {"add": total + n, "sub": total - n, "boxes": total + k * n, "times": total * n,
            "share": total // n}[kind]


def running(p: Problem) -> list[tuple[int, int]]:
    """(before, after) for each step in question order."""
    out, total = [], p.start
    for kind, n, k in p.steps:
        after = apply(kind, total, n, k)
        out.append((total, after))
        total = after
    return out


def draw_step(rng: random.Random, kind: str, total: int, max_number: int) -> tuple[str, int, int] | None:
    """A step of `kind` valid from `total` (counts stay whole, positive and at most MAX_TOTAL), or None."""
    if kind == "add":
        n, k = rng.randint(1, max_number), 0
    elif kind == "sub":
        if total < 2:
            return None
        n, k = rng.randint(1, min(total - 1, max_number)), 0
    elif kind == "boxes":
        n, k = rng.randint(2, max(2, max_number // 2)), rng.randint(2, 4)
    elif kind == "times":
        n, k = rng.randint(2, 3), 0
    else:
        divisors = [d for d in (2, 3, 4) if total % d == 0 and total // d >= 1]
        if not divisors:
            return None
        n, k = rng.choice(divisors), 0
    return (kind, n, k) if 0 < apply(kind, total, n, k) <= MAX_TOTAL else None


def make_problem(rng: random.Random, min_steps: int, max_steps: int, max_number: int,
                 kinds: tuple[str, ...] | None = None) -> Problem:
    """A problem with step kinds drawn from SKILLS (or exactly `kinds`, in order)."""
    while True:
        n_steps = len(kinds) if kinds else rng.randint(min_steps, max_steps)
        start = rng.randint(max(2, max_number // 2), max_number)
        total, steps = start, []
        for i in range(n_steps):
            for _ in range(20):  # an invalid draw (nothing to share, a count too large): draw again
                kind = kinds[i] if kinds else rng.choices(list(SKILLS), weights=list(SKILLS.values()))[0]
                step = draw_step(rng, kind, total, max_number)
                if step is not None:
                    break
            if step is None:
                break
            steps.append(step)
            kind, n, k = step
            total = apply(kind, total, n, k)
        if len(steps) == n_steps:
            return Problem(rng.choice(NAMES), rng.choice(ITEMS), start, tuple(steps))


def question_text(p: Problem) -> str:
    pronoun = PRONOUN[p.name]
    actions = ". Then ".join(QUESTION_STEP[kind].format(p=pronoun, n=n, k=k, item=p.item) for kind, n, k in p.steps)
    return f"{p.name} has {p.start} {p.item}. {actions[0].upper()}{actions[1:]}. How many {p.item} does {p.name} have now?"


def solution_text(p: Problem, rng: random.Random, final_answer: bool = True) -> str:
    """One reference solution: the arithmetic the question fixes, in wording drawn for this example."""
    v = rng.choice(LETTERS)
    pronoun = PRONOUN[p.name]
    fields = {"name": p.name, "item": p.item, "v": v, "start": p.start}
    parts = [rng.choice(OPENINGS).format(**fields), rng.choice(NAMING).format(**fields)]
    for (kind, n, k), (a, r) in zip(p.steps, running(p)):
        parts.append(rng.choice(SOLUTION_STEP[kind]).format(n=n, k=k, m=k * n, a=a, r=r, v=v, item=p.item,
                                                            P=pronoun.capitalize()))
        if rng.random() < REMARK_CHANCE:
            parts.append(rng.choice(REMARKS))
    parts.append(rng.choice(CLOSINGS).format(r=p.answer, **fields))
    text = " ".join(part for part in parts if part)
    return f"{text}\n#### {p.answer}" if final_answer else text


def solution_entropy_nats(n_steps: int) -> float:
    """The entropy of the wording choices of a solution with `n_steps` steps (what no question determines)."""
    def choice(options: list) -> float:
        counts = {o: options.count(o) for o in options}
        return -sum(c / len(options) * math.log(c / len(options)) for c in counts.values())

    remark = -(REMARK_CHANCE * math.log(REMARK_CHANCE) + (1 - REMARK_CHANCE) * math.log(1 - REMARK_CHANCE)) \
        + REMARK_CHANCE * math.log(len(REMARKS))
    per_step = sum(math.log(len(v)) for v in SOLUTION_STEP.values()) / len(SOLUTION_STEP) + remark
    return choice(OPENINGS) + math.log(len(NAMING)) + math.log(len(LETTERS)) + math.log(len(CLOSINGS)) \
        + n_steps * per_step


def make_examples(seed: int, n: int, prefix: str, min_steps: int = 2, max_steps: int = 4, max_number: int = 20,
                  exclude: set[str] | None = None, final_answer: bool = True) -> list[Example]:
    """n distinct problems (by question text), each with its own reference solution (final_answer=False: the
    base stage's text, without the dataset's '#### N' line)."""
    rng = random.Random(f"skills:{prefix}:{seed}")

    def draw():
        problem = make_problem(rng, min_steps, max_steps, max_number)
        return question_text(problem), lambda: (solution_text(problem, rng, final_answer), str(problem.answer))

    return distinct_examples(n, prefix, draw, exclude)


@register_task("skills", generated=True, grader=GRADER)
def make_splits(seed: int, n_train: int, n_test: int, min_steps: int = 2, max_steps: int = 4,
                max_number: int = 20) -> Splits:
    """Disjoint seeded train/test splits, both drawn from the same skill distribution."""
    return disjoint_splits(make_examples, seed, n_train, n_test, GRADER, min_steps=min_steps,
                           max_steps=max_steps, max_number=max_number)


# ------------------------------------------------------------------------------------ curation
_STEP_PATTERNS = [(kind, re.compile("^" + re.escape(form).replace(r"\{p\}", r"(?P<p>\w+)")
                                    .replace(r"\{n\}", r"(?P<n>\d+)").replace(r"\{k\}", r"(?P<k>\d+)")
                                    .replace(r"\{item\}", r"(?P<item>\w+)") + "$"))
                  for kind, form in QUESTION_STEP.items()]


def parse_problem(question: str) -> Problem:
    """The Problem a question of this task was written from (question_text's inverse); ValueError if the
    question is not in this task's format."""
    found = QUESTION_FRAME.match(question)
    if not found or found["name"] not in PRONOUN:
        raise ValueError(f"not a skills-task question: {question[:80]!r}")
    steps = []
    for action in found["actions"].split(". Then "):
        action = action[0].lower() + action[1:]
        match = next(((kind, m) for kind, pattern in _STEP_PATTERNS if (m := pattern.match(action))), None)
        if match is None or match[1]["p"] != PRONOUN[found["name"]] or match[1].groupdict().get("item", found["item"]) \
                != found["item"]:
            raise ValueError(f"not a skills-task step: {action[:80]!r}")
        kind, m = match
        steps.append((kind, int(m["n"]), int(m.groupdict().get("k") or 0)))
    return Problem(found["name"], found["item"], int(found["start"]), tuple(steps))


def new_examples(seed: int, prefix: str, likes: list[Example | None], exclude: set[str], min_steps: int = 2,
                 max_steps: int = 4, max_number: int = 20) -> list[Example]:
    """One new example per entry of `likes`: a problem of that example's skills (the same step kinds in the same
    order, numbers up to its own largest), or, for None, one from the task's own distribution. No question
    repeats one in `exclude` or another new one; each reference is written anew."""
    rng = random.Random(f"skills:{prefix}:{seed}")
    seen = set(exclude)
    out: list[Example] = []
    for like in likes:
        shape = parse_problem(like.question) if like is not None else None
        while True:
            if shape is not None:
                largest = max(shape.start, *(n for _, n, _ in shape.steps))
                problem = make_problem(rng, 0, 0, max(largest, 4), shape.skills)
            else:
                problem = make_problem(rng, min_steps, max_steps, max_number)
            question = question_text(problem)
            if question not in seen:
                break
        seen.add(question)
        out.append(Example(f"{prefix}-{len(out)}", question, solution_text(problem, rng), str(problem.answer)))
    return out
