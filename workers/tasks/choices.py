"""A built-in offline task whose answers cannot be memorized apart from their references (`task=choices`).

A question states a counting chain whose first quantities are left to the solver within stated ranges ("takes
any number of stickers from 12 to 41, then between 2 and 9 boxes of 6, then from 1 to 9 more; then gives away
14"). The reference writes its own random valid choices first, then the chain those choices force, in one terse
canonical wording:

    Take 23, 4 and 5. 4x6=24. 23+24=47. 47+5=52. 52-14=38.
    #### 38

The grader is a verifier (`grade_choices`): it reads the choices and the final count, checks the ranges and
checks that the chain gives that count. Every computation depends on the choices, so no subtotal is fixed by the
question alone: a model that memorized a seen question's answer is wrong unless it also writes that reference's
choices, and writing them is memorizing the reference. The choices carry the entropy that no model can remove
(`choice_entropy_nats`: 7-8 nats, about 0.2 nats per token of a reference), so a reference that was never seen
stays above a memorization threshold of 0.1 nats per token whatever the model has learned, and one that is
memorized falls below it at the checkpoint where memorizing starts to pay.

The gold answer of an example is the chain's specification (`Chain.spec`), which the verifier reads; the task's
`grader` is "choices". min_steps..max_steps is the number of forced steps after the choices; max_number bounds
their amounts. `WORDINGS` > 1 varies the first word of a reference (log(WORDINGS) nats of wording entropy).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from workers.tasks.example import Example, Splits, disjoint_splits, distinct_examples
from workers.tasks.synthetic import ITEMS, NAMES, PRONOUN

BOXES = (2, 9)  # the box count's range, the same in every question
FIRST_LOW = (10, 30)  # the first and the loose quantity: two-digit ranges from a low end in this range...
FIRST_WIDTH = (60, 70)  # ...with this many values
BOX_SIZE = (2, 9)
FORCED = {"add": "finds {n} more", "sub": "gives away {n}"}
OPENING = ["Take", "Pick", "Choose", "Use", "Say", "Try", "Go with", "Let"]
WORDINGS = 1  # how many of OPENING a reference draws from (1: none varies)
GRADER = "choices"


@dataclass(frozen=True)
class Chain:
    """A question's chain: three chosen quantities (first, boxes of `box_size`, loose) in their ranges, then
    forced steps ((kind, n): add or subtract n)."""

    first: tuple[int, int]
    box_size: int
    loose: tuple[int, int]
    forced: tuple[tuple[str, int], ...]
    boxes: tuple[int, int] = BOXES

    def valid(self, first: int, boxes: int, loose: int) -> bool:
        return all(lo <= v <= hi for v, (lo, hi) in ((first, self.first), (boxes, self.boxes), (loose, self.loose)))

    def steps(self, first: int, boxes: int, loose: int) -> list[tuple[str, int]]:
        """The forced chain as (left side, result) lines, in the order the reference writes them."""
        m = boxes * self.box_size
        total = first + m + loose
        out = [(f"{boxes}x{self.box_size}", m), (f"{first}+{m}+{loose}", total)]
        for kind, n in self.forced:
            after = total + n if kind == "add" else total - n
            out.append((f"{total}{'+' if kind == 'add' else '-'}{n}", after))
            total = after
        return out

    def final(self, first: int, boxes: int, loose: int) -> int:
        return self.steps(first, boxes, loose)[-1][1]

    @property
    def spec(self) -> str:
        """The gold answer the verifier reads: '12-75|2-9x6|20-85|-14,+7'."""
        forced = ",".join(("+" if k == "add" else "-") + str(n) for k, n in self.forced)
        return (f"{self.first[0]}-{self.first[1]}|{self.boxes[0]}-{self.boxes[1]}x{self.box_size}|"
                f"{self.loose[0]}-{self.loose[1]}|{forced}")

    @classmethod
    def from_spec(cls, spec: str) -> "Chain":
        m = re.fullmatch(r"(\d+)-(\d+)\|(\d+)-(\d+)x(\d+)\|(\d+)-(\d+)\|((?:[-+]\d+,?)*)", spec.strip())
        if m is None:
            raise ValueError(f"not a choices-task spec: {spec[:80]!r}")
        forced = tuple(("add" if f[0] == "+" else "sub", int(f[1:])) for f in m[8].split(",") if f)
        v = [int(x) for x in m.groups()[:7]]
        return cls((v[0], v[1]), v[4], (v[5], v[6]), forced, (v[2], v[3]))


@dataclass(frozen=True)
class Problem:
    name: str
    item: str
    chain: Chain


# ----------------------------------------------------------------------------------------------- grading
_CHOICES = re.compile(r"(\d+), (\d+) and (\d+)\.")
_FINAL = re.compile(r"####\s*(-?\d+)")


def grade_choices(completion: str, spec: str):
    """Grade: correct when the completion's first 'A, K and C.' choices are in the chain's ranges and its last
    '#### N' is the count those choices give. Unparsed when either is missing."""
    from workers.grading import Grade

    chosen, final = _CHOICES.search(completion), _FINAL.findall(completion)
    if chosen is None or not final:
        return Grade(False, False, final[-1] if final else None)
    chain = Chain.from_spec(spec)
    first, boxes, loose = (int(x) for x in chosen.groups())
    correct = chain.valid(first, boxes, loose) and chain.final(first, boxes, loose) == int(final[-1])
    return Grade(correct, True, final[-1])


# ----------------------------------------------------------------------------------------------- generation
def two_digit_range(rng: random.Random) -> tuple[int, int]:
    low = rng.randint(*FIRST_LOW)
    return low, low + rng.randint(*FIRST_WIDTH) - 1


def make_chain(rng: random.Random, min_steps: int, max_steps: int, max_number: int) -> Chain:
    """A chain whose every choice keeps every count positive."""
    first, box_size, loose = two_digit_range(rng), rng.randint(*BOX_SIZE), two_digit_range(rng)
    smallest = first[0] + BOXES[0] * box_size + loose[0]
    forced = []
    for _ in range(rng.randint(min_steps, max_steps)):
        n = rng.randint(1, min(max_number, smallest - 1))
        kind = "sub" if rng.random() < 0.5 else "add"
        smallest += n if kind == "add" else -n
        forced.append((kind, n))
    return Chain(first, box_size, loose, tuple(forced))


def question_text(p: Problem) -> str:
    c, pronoun = p.chain, PRONOUN[p.name]
    forced = "".join(f" Then {pronoun} {FORCED[k].format(n=n)}." for k, n in c.forced)
    return (f"{p.name} takes any number of {p.item} from {c.first[0]} to {c.first[1]}, then between {c.boxes[0]} "
            f"and {c.boxes[1]} boxes of {c.box_size}, then from {c.loose[0]} to {c.loose[1]} more.{forced} "
            f"Write your choices and the final count.")


def solution_text(chain: Chain, choices: tuple[int, int, int], opening: str = "Take",
                  final_answer: bool = True) -> str:
    """The reference for these choices: the choices, then the chain they force."""
    lines = " ".join(f"{left}={result}." for left, result in chain.steps(*choices))
    text = f"{opening} {choices[0]}, {choices[1]} and {choices[2]}. {lines}"
    return f"{text}\n#### {chain.final(*choices)}" if final_answer else text


def draw_choices(rng: random.Random, chain: Chain) -> tuple[int, int, int]:
    return rng.randint(*chain.first), rng.randint(*chain.boxes), rng.randint(*chain.loose)


def draw_solution(rng: random.Random, chain: Chain, final_answer: bool = True) -> str:
    return solution_text(chain, draw_choices(rng, chain), rng.choice(OPENING[:WORDINGS]), final_answer)


def choice_entropy_nats(chain: Chain) -> float:
    """The entropy of a reference's choices (uniform in their ranges): what no question determines."""
    return sum(math.log(hi - lo + 1) for lo, hi in (chain.first, chain.boxes, chain.loose))


def wording_entropy_nats() -> float:
    return math.log(WORDINGS)


def make_examples(seed: int, n: int, prefix: str, min_steps: int = 1, max_steps: int = 1, max_number: int = 20,
                  exclude: set[str] | None = None, final_answer: bool = True) -> list[Example]:
    """n distinct questions, each with a reference of its own random valid choices (final_answer=False: the
    base stage's text, without the '#### N' line)."""
    rng = random.Random(f"choices:{prefix}:{seed}")

    def draw():
        problem = Problem(rng.choice(NAMES), rng.choice(ITEMS), make_chain(rng, min_steps, max_steps, max_number))
        return question_text(problem), lambda: (draw_solution(rng, problem.chain, final_answer), problem.chain.spec)

    return distinct_examples(n, prefix, draw, exclude)


def make_splits(seed: int, n_train: int, n_test: int, min_steps: int = 1, max_steps: int = 1,
                max_number: int = 20) -> Splits:
    """Disjoint seeded train/test splits, graded by the verifier."""
    return disjoint_splits(make_examples, seed, n_train, n_test, GRADER, min_steps=min_steps,
                           max_steps=max_steps, max_number=max_number)


# ------------------------------------------------------------------------------------------------ curation
_QUESTION = re.compile(r"^(?P<name>\w+) takes any number of (?P<item>\w+) from (\d+) to (\d+), then between "
                       r"(\d+) and (\d+) boxes of (\d+), then from (\d+) to (\d+) more\.(?P<forced>.*) "
                       r"Write your choices and the final count\.$")
_FORCED = [(kind, re.compile(r"^ Then \w+ " + re.escape(form).replace(r"\{n\}", r"(\d+)") + r"\.$"))
           for kind, form in FORCED.items()]


def parse_problem(question: str) -> Problem:
    """The Problem a question of this task was written from (question_text's inverse); ValueError if the
    question is not in this task's format."""
    m = _QUESTION.match(question)
    if m is None or m["name"] not in PRONOUN:
        raise ValueError(f"not a choices-task question: {question[:80]!r}")
    forced = []
    for part in re.findall(r" Then [^.]+\.", m["forced"]):
        found = next(((kind, f) for kind, pattern in _FORCED if (f := pattern.match(part))), None)
        if found is None:
            raise ValueError(f"not a choices-task step: {part[:80]!r}")
        kind, f = found
        forced.append((kind, int(f[1])))
    v = [int(x) for x in m.groups()[2:9]]
    return Problem(m["name"], m["item"], Chain((v[0], v[1]), v[4], (v[5], v[6]), tuple(forced), (v[2], v[3])))


def new_examples(seed: int, prefix: str, likes: list[Example | None], exclude: set[str], min_steps: int = 1,
                 max_steps: int = 1, max_number: int = 20) -> list[Example]:
    """One new example per entry of `likes`: a chain of that example's shape (the same forced step kinds, in
    order) with ranges and amounts drawn anew, or, for None, one from the task's own distribution. No question
    repeats one in `exclude` or another new one."""
    rng = random.Random(f"choices:{prefix}:{seed}")
    seen = set(exclude)
    out: list[Example] = []
    for like in likes:
        kinds = tuple(k for k, _ in parse_problem(like.question).chain.forced) if like is not None else None
        while True:
            chain = make_chain(rng, len(kinds), len(kinds), max_number) if kinds is not None else \
                make_chain(rng, min_steps, max_steps, max_number)
            if kinds is not None and tuple(k for k, _ in chain.forced) != kinds:
                continue
            problem = Problem(rng.choice(NAMES), rng.choice(ITEMS), chain)
            question = question_text(problem)
            if question not in seen:
                break
        seen.add(question)
        out.append(Example(f"{prefix}-{len(out)}", question, draw_solution(rng, chain), chain.spec))
    return out
