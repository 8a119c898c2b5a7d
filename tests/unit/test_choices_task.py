"""The `choices` built-in task: seeded and disjoint, references whose own random choices force a true chain, a
verifier that accepts any valid choices and rejects a memorized answer without its choices, the entropy the
choices carry, questions that parse back, and curation's generator keeping a picked example's shape."""
import random
import re

import pytest

from workers.grading import Grader
from workers.tasks import choices, load_task

LINE = re.compile(r"(\d+)([-+])(\d+)=(\d+)\.")


def test_seeded_disjoint_and_loaded_by_name():
    a = choices.make_splits(seed=3, n_train=300, n_test=100)
    assert [e.solution for e in a.train] == [e.solution for e in choices.make_splits(3, 300, 100).train]
    assert {e.question for e in a.train}.isdisjoint({e.question for e in a.test})
    loaded = load_task("choices", seed=3, train_fraction=1.0, n_train=300, n_test=100, min_steps=3, max_steps=4,
                       max_number=20)
    assert loaded.train == a.train and loaded.grader == "choices"


def test_every_reference_is_a_true_positive_chain_its_verifier_accepts():
    grader = Grader("choices")
    examples = choices.make_examples(0, 400, "check")
    assert all(g.correct for g in grader.grade([e.solution for e in examples], [e.answer for e in examples]))
    for e in examples:
        lines = LINE.findall(e.solution)
        chain = choices.Chain.from_spec(e.answer)
        assert len(lines) == len(chain.chosen) + 1
        for i, (a, sign, n, r) in enumerate(lines):
            assert (int(a) + int(n) if sign == "+" else int(a) - int(n)) == int(r) > 0, e.solution
            assert i + 1 == len(lines) or lines[i + 1][0] == r  # each step starts from the last result


def test_the_verifier_accepts_any_valid_choices_and_nothing_else():
    chain = choices.Chain((12, 31), (("add", (1, 9)), ("sub", (1, 9)), ("add", (1, 9))), ("sub", 14))
    spec = chain.spec
    assert spec == "12-31|+1-9|-1-9|+1-9|-14" and choices.Chain.from_spec(spec) == chain
    reference = choices.solution_text(chain, (23, 7, 4, 8))
    assert reference == "23+7=30. 30-4=26. 26+8=34. 34-14=20."
    # a model's own choices, in range, with the count they give: right, whatever the reference chose
    assert choices.grade_choices(choices.solution_text(chain, (31, 9, 1, 2)), spec).correct
    # the reference's count written after other choices: wrong (a memorized answer without its choices)
    assert not choices.grade_choices("31+9=40. 40-1=39. 39+2=41. 41-14=20.", spec).correct
    # a choice out of its range, or a step of the wrong kind, even with the count those numbers give
    assert not choices.grade_choices(choices.solution_text(chain, (32, 7, 4, 8)), spec).correct
    assert not choices.grade_choices(choices.solution_text(chain, (23, 10, 4, 8)), spec).correct
    wrong_kind = choices.grade_choices("23+7=30. 30+4=34. 34+8=42. 42-14=28.", spec)
    assert wrong_kind.parsed and not wrong_kind.correct
    # too few steps (the fixed last one missing): unparsed
    assert not choices.grade_choices("23+7=30. 30-4=26. 26+8=34.", spec).parsed
    # the verifier reads the choices and the final count, not the other written results
    assert choices.grade_choices("23+7=31. 30-4=26. 26+8=34. 34-14=20.", spec).correct
    with pytest.raises(ValueError, match="not a choices-task spec"):
        choices.Chain.from_spec("42")


def test_every_result_moves_with_the_choices():
    """No subtotal is fixed by the question alone: changing any one choice changes the final count."""
    chain = choices.make_chain(random.Random(4), 4, 4, 20)
    picked = (chain.start[0] + 1, 2, 2, 2, 2)
    for i in range(len(picked)):
        other = tuple(v + (i == j) for j, v in enumerate(picked))
        assert chain.valid(other) and chain.final(other) != chain.final(picked)
        assert all(a[3] != b[3] for a, b in zip(chain.steps(picked)[i and i - 1:], chain.steps(other)[i and i - 1:]))


def test_the_choices_carry_the_entropy_and_references_differ_per_draw():
    chain = choices.make_chain(random.Random(1), 3, 3, 20)
    texts = {choices.draw_solution(random.Random(seed), chain) for seed in range(300)}
    assert len(texts) >= 295
    entropies = [choices.choice_entropy_nats(choices.parse_problem(e.question).chain)
                 for e in choices.make_examples(0, 200, "h")]
    assert min(entropies) > 9.4 and max(entropies) < 12.0


def test_questions_parse_back_and_curation_keeps_the_shape():
    examples = choices.make_examples(5, 200, "parse")
    for e in examples:
        assert choices.question_text(choices.parse_problem(e.question)) == e.question
        assert choices.parse_problem(e.question).chain.spec == e.answer
    with pytest.raises(ValueError, match="not a choices-task"):
        choices.parse_problem("Ava has 3 apples. She eats 2 apples. How many apples does Ava have now?")
    likes = examples[:20] + [None]
    new = choices.new_examples(0, "added", likes, {e.question for e in examples})
    assert len({e.question for e in new}) == 21 and not {e.question for e in new} & {e.question for e in examples}
    for like, e in zip(likes, new):
        if like is not None:
            assert [k for k, _ in choices.parse_problem(e.question).chain.chosen] == \
                [k for k, _ in choices.parse_problem(like.question).chain.chosen]
        assert choices.grade_choices(e.solution, e.answer).correct
