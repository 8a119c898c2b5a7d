"""A built-in offline task whose answers cannot be memorized apart from their references (`task=choices`).

A question states a counting chain whose amounts are left to the solver within stated ranges ("starts with any
number of stickers from 12 to 31; then finds any number from 1 to 9 more; then gives away any number from 1 to
9; ...; then gives away 14"). The reference draws its own random valid choices and writes the chain they force,
one line a step, each choice where it is used:

    23+7=30. 30-4=26. 26+8=34. 34+5=39. 39-14=25.

The grader is a verifier (`grade_choices`): it reads the choices from the written steps and the final count (the
last step's result), checks the ranges and that the chain of those choices gives that count. Every result depends on the choices, so
no subtotal is fixed by the question alone: a model that memorized a seen question's answer is wrong unless it
also writes that reference's choices, and writing them is memorizing the reference. The choices carry entropy
no model can remove (`choice_entropy_nats`: 11-12 nats, about 0.2 nats per token of a reference), so a reference
that was never seen stays above a memorization threshold of 0.1 nats per token whatever the model has learned.
Each step adds or subtracts one digit: arithmetic the tiny built-in model learns in its base stage. There is no
separate answer line: the last step is the answer, so a reference is all choices and the steps they force.

The gold answer of an example is the chain's specification (`Chain.spec`), which the verifier reads; the task's
`grader` is "choices". min_steps..max_steps is the number of chosen steps after the start; max_number bounds the
last, fixed step's amount. `WORDINGS` > 1 varies the reference's first word (log(WORDINGS) nats of wording).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from workers.grading import Grade, register_grader
from workers.tasks.example import Example, Splits, disjoint_splits, distinct_examples
from workers.tasks.registry import register_task
from workers.tasks.synthetic import ITEMS, NAMES, PRONOUN

START_LOW = (10, 20)  # the start's range: from a low end in this range...
START_WIDTH = (18, 22)  # ...with this many values
STEP_RANGE = (1, 9)  # a chosen step's amount
FIND_CHANCE = 0.6  # a chosen step finds (adds); else gives away (subtracts)
OPENING = ["", "So ", "Here ", "Now ", "Then ", "Count ", "Well ", "Ok "]
WORDINGS = 1  # how many of OPENING a reference draws from (1: none varies)
GRADER = "choices"
SIGN = {"add": "+", "sub": "-"}


@dataclass(frozen=True)
class Chain:
    """A question's chain: a start chosen in `start`, chosen steps ((kind, (lo, hi)): add or subtract an amount
    chosen in lo..hi), then a fixed step (kind, n)."""

    start: tuple[int, int]
    chosen: tuple[tuple[str, tuple[int, int]], ...]
    fixed: tuple[str, int]

    def valid(self, choices: tuple[int, ...]) -> bool:
        ranges = [self.start] + [r for _, r in self.chosen]
        return len(choices) == len(ranges) and all(lo <= v <= hi for v, (lo, hi) in zip(choices, ranges))

    def steps(self, choices: tuple[int, ...]) -> list[tuple[int, str, int, int]]:
        """The chain as (before, sign, amount, after) lines, in order."""
        total, out = choices[0], []
        for kind, amount in [*((k, c) for (k, _), c in zip(self.chosen, choices[1:])), self.fixed]:
            after = total + amount if kind == "add" else total - amount
            out.append((total, SIGN[kind], amount, after))
            total = after
        return out

    def final(self, choices: tuple[int, ...]) -> int:
        return self.steps(choices)[-1][3]

    @property
    def spec(self) -> str:
        """The gold answer the verifier reads: '12-31|+1-9|-1-9|+1-9|-14'."""
        chosen = "|".join(f"{SIGN[k]}{lo}-{hi}" for k, (lo, hi) in self.chosen)
        return f"{self.start[0]}-{self.start[1]}|{chosen}|{SIGN[self.fixed[0]]}{self.fixed[1]}"

    @classmethod
    def from_spec(cls, spec: str) -> "Chain":
        parts = spec.strip().split("|")
        start, fixed = re.fullmatch(r"(\d+)-(\d+)", parts[0]), re.fullmatch(r"([-+])(\d+)", parts[-1])
        chosen = [re.fullmatch(r"([-+])(\d+)-(\d+)", p) for p in parts[1:-1]]
        if len(parts) < 3 or start is None or fixed is None or not all(chosen):
            raise ValueError(f"not a choices-task spec: {spec[:80]!r}")
        kind = {"+": "add", "-": "sub"}
        return cls((int(start[1]), int(start[2])), tuple((kind[m[1]], (int(m[2]), int(m[3]))) for m in chosen),
                   (kind[fixed[1]], int(fixed[2])))


@dataclass(frozen=True)
class Problem:
    name: str
    item: str
    chain: Chain


# ----------------------------------------------------------------------------------------------- grading
STEP_LINE = re.compile(r"(\d+)([-+])(\d+)=(-?\d+)\.")


def read_choices(completion: str, chain: Chain) -> tuple[int, ...] | None:
    """The choices a completion wrote: the first line's start and the amounts of its chosen steps, or None when
    it wrote fewer lines than the chain has chosen steps."""
    lines = STEP_LINE.findall(completion)
    if len(lines) < len(chain.chosen):
        return None
    return (int(lines[0][0]), *(int(amount) for _, _, amount, _ in lines[:len(chain.chosen)]))


def kinds_match(completion: str, chain: Chain) -> bool:
    """Whether each chosen step the completion wrote adds or subtracts as the question says."""
    return all(sign == SIGN[kind] for (_, sign, _, _), (kind, _) in zip(STEP_LINE.findall(completion), chain.chosen))


@register_grader(GRADER)
def grade_choices(completion: str, spec: str) -> Grade:
    """Grade: correct when the choices the completion wrote are in the chain's ranges and its last step's result
    is the count those choices give. Unparsed when it wrote fewer steps than the chain has."""
    chain, lines = Chain.from_spec(spec), STEP_LINE.findall(completion)
    chosen = read_choices(completion, chain)
    if chosen is None or len(lines) < len(chain.chosen) + 1:
        return Grade(False, False, lines[-1][3] if lines else None)
    final = lines[-1][3]
    right = kinds_match(completion, chain) and chain.valid(chosen) and chain.final(chosen) == int(final)
    return Grade(right, True, final)


# ----------------------------------------------------------------------------------------------- generation
def make_chain(rng: random.Random, min_steps: int, max_steps: int, max_number: int,
               kinds: tuple[str, ...] | None = None) -> Chain:
    """A chain whose every choice keeps every count positive (kinds: the chosen steps' kinds, in order)."""
    low = rng.randint(*START_LOW)
    start = (low, low + rng.randint(*START_WIDTH) - 1)
    smallest, chosen = start[0], []
    for i in range(len(kinds) if kinds else rng.randint(min_steps, max_steps)):
        kind = kinds[i] if kinds else ("add" if rng.random() < FIND_CHANCE else "sub")
        if kind == "sub" and smallest <= STEP_RANGE[1]:
            kind = "add"
        chosen.append((kind, STEP_RANGE))
        smallest += STEP_RANGE[0] if kind == "add" else -STEP_RANGE[1]
    fixed_kind = "sub" if rng.random() < 0.5 and smallest > 1 else "add"
    fixed = (fixed_kind, rng.randint(1, min(max_number, smallest - 1) if fixed_kind == "sub" else max_number))
    return Chain(start, tuple(chosen), fixed)


QUESTION_STEP = {"add": "finds any number from {lo} to {hi} more", "sub": "gives away any number from {lo} to {hi}"}
FIXED_STEP = {"add": "finds {n} more", "sub": "gives away {n}"}


def question_text(p: Problem) -> str:
    c, pronoun = p.chain, PRONOUN[p.name]
    steps = "".join(f" Then {pronoun} {QUESTION_STEP[k].format(lo=lo, hi=hi)}." for k, (lo, hi) in c.chosen)
    return (f"{p.name} starts with any number of {p.item} from {c.start[0]} to {c.start[1]}.{steps} Then "
            f"{pronoun} {FIXED_STEP[c.fixed[0]].format(n=c.fixed[1])}. Write each step and the final count.")


def solution_text(chain: Chain, choices: tuple[int, ...], opening: str = "") -> str:
    """The reference for these choices: the chain they force, one line a step; the last step is the answer."""
    return opening + " ".join(f"{a}{sign}{n}={r}." for a, sign, n, r in chain.steps(choices))


def draw_choices(rng: random.Random, chain: Chain) -> tuple[int, ...]:
    return (rng.randint(*chain.start), *(rng.randint(*r) for _, r in chain.chosen))


def draw_solution(rng: random.Random, chain: Chain) -> str:
    return solution_text(chain, draw_choices(rng, chain), rng.choice(OPENING[:WORDINGS]))


def choice_entropy_nats(chain: Chain) -> float:
    """The entropy of a reference's choices (uniform in their ranges): what no question determines."""
    return sum(math.log(hi - lo + 1) for lo, hi in (chain.start, *(r for _, r in chain.chosen)))


def wording_entropy_nats() -> float:
    return math.log(WORDINGS)


def make_examples(seed: int, n: int, prefix: str, min_steps: int = 3, max_steps: int = 4, max_number: int = 20,
                  exclude: set[str] | None = None, final_answer: bool = True) -> list[Example]:
    """n distinct questions, each with a reference of its own random valid choices. The base stage's text is the
    same (final_answer is ignored: the task has no separate answer line)."""
    rng = random.Random(f"choices:{prefix}:{seed}")

    def draw():
        problem = Problem(rng.choice(NAMES), rng.choice(ITEMS), make_chain(rng, min_steps, max_steps, max_number))
        return question_text(problem), lambda: (draw_solution(rng, problem.chain), problem.chain.spec)

    return distinct_examples(n, prefix, draw, exclude)


@register_task("choices", generated=True, grader=GRADER)
def make_splits(seed: int, n_train: int, n_test: int, min_steps: int = 3, max_steps: int = 4,
                max_number: int = 20) -> Splits:
    """Disjoint seeded train/test splits, graded by the verifier."""
    return disjoint_splits(make_examples, seed, n_train, n_test, GRADER, min_steps=min_steps,
                           max_steps=max_steps, max_number=max_number)


# ------------------------------------------------------------------------------------------------ curation
_QUESTION = re.compile(r"^(?P<name>\w+) starts with any number of (?P<item>\w+) from (\d+) to (\d+)\.(?P<steps>.*) "
                       r"Then \w+ (?:(finds) (\d+) more|(gives) away (\d+))\. Write each step and the final count\.$")
_CHOSEN = re.compile(r" Then \w+ (?:(finds) any number from (\d+) to (\d+) more|(gives) away any number from (\d+) "
                     r"to (\d+))\.")


def parse_problem(question: str) -> Problem:
    """The Problem a question of this task was written from (question_text's inverse); ValueError if the
    question is not in this task's format."""
    m = _QUESTION.match(question)
    if m is None or m["name"] not in PRONOUN:
        raise ValueError(f"not a choices-task question: {question[:80]!r}")
    chosen = []
    for step in _CHOSEN.finditer(m["steps"]):
        kind = "add" if step[1] else "sub"
        chosen.append((kind, (int(step[2] or step[5]), int(step[3] or step[6]))))
    if "".join(s[0] for s in _CHOSEN.finditer(m["steps"])) != m["steps"]:
        raise ValueError(f"not a choices-task step in {m['steps'][:80]!r}")
    fixed = ("add", int(m[7])) if m[6] else ("sub", int(m[9]))
    return Problem(m["name"], m["item"], Chain((int(m[3]), int(m[4])), tuple(chosen), fixed))


def new_examples(seed: int, prefix: str, likes: list[Example | None], exclude: set[str], min_steps: int = 3,
                 max_steps: int = 4, max_number: int = 20) -> list[Example]:
    """One new example per entry of `likes`: a chain of that example's shape (the same chosen step kinds, in
    order) with its start range and fixed step drawn anew, or, for None, one from the task's own distribution.
    No question repeats one in `exclude` or another new one."""
    rng = random.Random(f"choices:{prefix}:{seed}")
    seen = set(exclude)
    out: list[Example] = []
    for like in likes:
        kinds = tuple(k for k, _ in parse_problem(like.question).chain.chosen) if like is not None else None
        while True:
            chain = make_chain(rng, min_steps, max_steps, max_number, kinds)
            if kinds is not None and tuple(k for k, _ in chain.chosen) != kinds:
                continue  # a start too low for its give-aways: draw again
            problem = Problem(rng.choice(NAMES), rng.choice(ITEMS), chain)
            question = question_text(problem)
            if question not in seen:
                break
        seen.add(question)
        out.append(Example(f"{prefix}-{len(out)}", question, draw_solution(rng, chain), chain.spec))
    return out
