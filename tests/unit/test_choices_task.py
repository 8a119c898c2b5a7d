"""The `choices` built-in task: seeded and disjoint, references whose own random choices force a true chain, a
verifier that accepts any valid choices and rejects a memorized answer without its choices, questions that parse
back, and curation's generator keeping a picked example's shape."""
import random
import re

import pytest

from workers.grading import Grader
from workers.tasks import choices, load_task

EQUATION = re.compile(r"([-+x\d]+)=(\d+)\.")


def test_seeded_disjoint_and_loaded_by_name():
    a = choices.make_splits(seed=3, n_train=300, n_test=100)
    assert [e.solution for e in a.train] == [e.solution for e in choices.make_splits(3, 300, 100).train]
    assert {e.question for e in a.train}.isdisjoint({e.question for e in a.test})
    loaded = load_task("choices", seed=3, train_fraction=1.0, n_train=300, n_test=100, min_steps=1, max_steps=1,
                       max_number=20)
    assert loaded.train == a.train and loaded.grader == "choices"


def test_every_reference_is_a_true_chain_its_verifier_accepts():
    grader = Grader("choices")
    examples = choices.make_examples(0, 400, "check")
    assert all(g.correct for g in grader.grade([e.solution for e in examples], [e.answer for e in examples]))
    for e in examples:
        lines = EQUATION.findall(e.solution)
        assert len(lines) >= 3
        for left, result in lines:
            assert eval(left.replace("x", "*")) == int(result) > 0, e.solution


def test_the_verifier_accepts_any_valid_choices_and_nothing_else():
    chain = choices.Chain((12, 75), 6, (20, 85), (("sub", 14), ("add", 3)))
    spec = chain.spec
    assert choices.Chain.from_spec(spec) == chain
    # a model's own choices, in range, with the count they give: right, whatever the reference chose
    mine = choices.solution_text(chain, (40, 9, 21))
    assert choices.grade_choices(mine, spec).correct
    # the count of the reference's choices written after other choices: wrong (a memorized answer alone)
    reference_count = chain.final(23, 4, 50)
    assert not choices.grade_choices(f"Take 40, 9 and 21. ...\n#### {reference_count}", spec).correct
    # out of range, even with the right count for those numbers
    assert not choices.grade_choices(choices.solution_text(chain, (76, 4, 50)), spec).correct
    assert not choices.grade_choices(choices.solution_text(chain, (20, 1, 50)), spec).correct
    # no choices or no final line: unparsed
    assert not choices.grade_choices(f"#### {reference_count}", spec).parsed
    assert not choices.grade_choices("Take 23, 4 and 50. 4x6=24.", spec).parsed
    # the verifier reads the chain, not the written steps: a wrong step with the right final count passes
    assert choices.grade_choices(f"Take 23, 4 and 50. 4x6=25.\n#### {chain.final(23, 4, 50)}", spec).correct


def test_no_subtotal_is_fixed_by_the_question():
    """Every line of the chain changes with some choice: nothing of the answer can be memorized as a constant."""
    chain = choices.make_chain(random.Random(4), 2, 2, 20)
    lo, hi = chain.first, chain.boxes
    base = chain.steps(lo[0], hi[0], chain.loose[0])
    for other in ((lo[0] + 1, hi[0], chain.loose[0]), (lo[0], hi[0] + 1, chain.loose[0]),
                  (lo[0], hi[0], chain.loose[0] + 1)):
        assert base[-1][1] != chain.steps(*other)[-1][1]  # the final count moves with each choice
    # and every written result moves with some choice
    assert all(a[1] != b[1] for a, b in zip(base, chain.steps(lo[0] + 1, hi[0] + 1, chain.loose[0] + 1)))


def test_the_choices_carry_the_entropy_and_references_differ_per_draw():
    chain = choices.make_chain(random.Random(1), 1, 1, 20)
    texts = {choices.draw_solution(random.Random(seed), chain) for seed in range(300)}
    assert len(texts) >= 270
    assert all(10.0 < choices.choice_entropy_nats(e_chain) < 10.7 for e_chain in
               (choices.parse_problem(e.question).chain for e in choices.make_examples(0, 200, "h")))


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
            assert [k for k, _ in choices.parse_problem(e.question).chain.forced] == \
                [k for k, _ in choices.parse_problem(like.question).chain.forced]
        assert choices.grade_choices(e.solution, e.answer).correct
