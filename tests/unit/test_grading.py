"""Graders on real-format answers, including the ugly ones."""
import pytest

import threading

from tests.conftest import REPO
from workers.grading import (Grader, MathVerifier, extract_gsm8k_answer, gold_answer_gsm8k, gold_answer_math,
                             grade_gsm8k, grade_math, last_boxed, math_equivalent, quick_verdict)

# A real GSM8k reference solution (train split), calculator annotations included.
GSM8K_REFERENCE = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                   "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")


@pytest.mark.parametrize("completion,gold,correct,parsed", [
    (GSM8K_REFERENCE, "72", True, True),
    ("She earns 1,000 + 234 = 1,234 dollars.\n#### 1,234", "1234", True, True),
    ("The total is $18.\n#### $18", "18", True, True),
    ("#### 18.00", "18", True, True),
    ("So the answer is 5.\nThe answer is 42.", "42", True, True),
    ("The final answer is: $1,250.", "1250", True, True),
    ("#### -3", "-3", True, True),
    ("2 + 2 = 4.\n#### 4\n#### 5", "5", True, True),  # the last final-answer line counts
    ("#### 71", "72", False, True),
    ("She has 72 clips.", "72", False, False),  # no final-answer marker: unparsed, wrong
    ("", "72", False, False),
    ("#### seventy-two", "72", False, False),
])
def test_grade_gsm8k(completion, gold, correct, parsed):
    grade = grade_gsm8k(completion, gold)
    assert (grade.correct, grade.parsed) == (correct, parsed)


def test_gsm8k_gold_answer_from_reference():
    assert gold_answer_gsm8k(GSM8K_REFERENCE) == "72"
    assert extract_gsm8k_answer("#### 3,600") == "3,600"
    with pytest.raises(ValueError):
        gold_answer_gsm8k("no final line")


# A real MATH solution (Algebra, level 3 style), nested braces inside \boxed.
MATH_SOLUTION = ("We have $\\sqrt{3}\\cdot\\frac{1}{2}$, so the ratio is "
                 "$\\boxed{\\frac{\\sqrt{3}}{2}}$.")


@pytest.mark.parametrize("completion,gold,correct,parsed", [
    (MATH_SOLUTION, "\\frac{\\sqrt{3}}{2}", True, True),
    ("so $x = \\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}", True, True),
    ("The answer is $\\boxed{0.5}$.", "\\frac{1}{2}", True, True),
    ("$\\boxed{\\frac12}$", "\\frac{1}{2}", True, True),
    ("$\\boxed{\\left( 3, -\\frac{1}{2} \\right)}$", "(3,-\\frac{1}{2})", True, True),
    ("$\\boxed{10\\text{ cm}}$", "10", True, True),
    ("$\\boxed{90^\\circ}$", "90", True, True),
    ("$\\boxed{x=5}$", "5", True, True),
    ("$\\boxed{\\$1.50}$", "1.5", True, True),
    ("\\boxed 7", "7", True, True),
    ("\\fbox{3}", "3", True, True),
    ("$\\boxed{\\frac{2}{3}}$", "\\frac{1}{2}", False, True),
    ("I think it is 1/2", "\\frac{1}{2}", False, False),
    ("$\\boxed{\\frac{1}{2}", "\\frac{1}{2}", False, False),  # unbalanced: unparsed
])
def test_grade_math(completion, gold, correct, parsed):
    grade = grade_math(completion, gold)
    assert (grade.correct, grade.parsed) == (correct, parsed)


def test_math_helpers():
    assert last_boxed("a \\boxed{1} then \\boxed{\\{2\\}}") == "\\{2\\}"
    assert gold_answer_math(MATH_SOLUTION) == "\\frac{\\sqrt{3}}{2}"
    assert math_equivalent("-\\frac{3}{4}", "-0.75")
    assert math_equivalent("3/4", "\\tfrac{3}{4}")
    assert not math_equivalent("\\frac{1}{0}", "0")


# (sample's boxed answer, gold answer as MATH stores it): judged equivalent.
EQUIVALENT = [
    ("\\frac{1}{10}", "\\frac1{10}"),  # MATH's gold style without braces
    ("\\frac1{10}", "0.1"),
    ("\\frac{1}{2}", "\\frac12"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),
    ("\\tfrac{3}{4}", "0.75"),
    ("\\frac{5}{9}", "\\frac59"),
    ("\\text{Evelyn}", "\\text{Evelyn}"),  # text answers survive normalization
    ("Evelyn", "\\text{Evelyn}"),
    ("\\textbf{(C)}", "\\text{(C)}"),
    ("\\mbox{odd}", "\\text{odd}"),
    ("(0,\\infty)", "(0, \\infty)"),  # intervals
    ("[1, \\infty)", "[1,\\infty)"),
    ("(-\\infty,0)\\cup(1,\\infty)", "(-\\infty, 0) \\cup (1, \\infty)"),
    ("\\{1,2\\}", "\\{2,1\\}"),  # sets
    ("2, -2", "-2, 2"),  # "enter all the solutions": order does not matter
    ("3,2", "2,3"),
    ("(3,-1)", "\\left(3, -1\\right)"),  # tuples
    ("(6, 4)", "(6,4)"),
    ("\\begin{pmatrix}17\\\\2\\end{pmatrix}", "\\begin{pmatrix} 17 \\\\ 2 \\end{pmatrix}"),  # matrices
    ("\\begin{bmatrix}1&0\\\\0&1\\end{bmatrix}", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}"),
    ("10", "10\\text{ cm}"),  # units
    ("125", "125\\text{ cents}"),
    ("90", "90^\\circ"),  # degrees
    ("45^{\\circ}", "45"),
    ("25", "25\\%"),  # percent
    ("25\\%", "25\\%"),
    ("6.022\\times10^{23}", "6.022 \\times 10^{23}"),  # scientific notation
    ("1.2\\times 10^{3}", "1200"),
    ("7\\sqrt{5}", "7\\sqrt5"),  # radicals
    ("\\sqrt{245}", "7\\sqrt{5}"),
    ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"),
    ("3\\sqrt{5}", "\\sqrt{45}"),
    ("9\\pi", "9\\pi"),  # pi
    ("\\pi \\cdot 9", "9\\pi"),
    ("x^2-x-6", "x^2 - x - 6"),  # expressions with variables
    ("(x+2)(x-3)", "x^2 - x - 6"),
    ("\\frac{x-2}{3}", "\\frac{x}{3}-\\frac{2}{3}"),
    ("1+x", "x+1"),
    ("x = 3", "3"),  # "x = 3" vs "3"
    ("k=5", "5"),
    ("\\$1.50", "1.5"),
    ("1,000", "1000"),
]

# Judged not equivalent.
NOT_EQUIVALENT = [
    ("\\frac{1}{10}", "\\frac{10}{1}"),
    ("\\frac{2}{3}", "\\frac12"),
    ("0.33", "\\frac13"),
    ("\\text{Bob}", "\\text{Evelyn}"),  # two text answers are not both "" after stripping
    ("\\text{(B)}", "\\text{(C)}"),
    ("\\text{even}", "\\text{odd}"),
    ("(0,\\infty)", "[0,\\infty)"),  # intervals: open vs closed ends
    ("(2,5]", "[2,5)"),
    ("(-\\infty,0)", "(-\\infty, 0) \\cup (1, \\infty)"),
    ("\\{1,2\\}", "\\{1,2,3\\}"),  # sets
    ("2", "-2, 2"),
    ("(6,4)", "(4,6)"),  # tuples are ordered
    ("(3,1)", "(3, -1)"),
    ("\\begin{pmatrix}2\\\\17\\end{pmatrix}", "\\begin{pmatrix} 17 \\\\ 2 \\end{pmatrix}"),  # matrices
    ("\\begin{pmatrix}17\\\\3\\end{pmatrix}", "\\begin{pmatrix} 17 \\\\ 2 \\end{pmatrix}"),
    ("12", "10\\text{ cm}"),  # units do not rescue a wrong number
    ("89", "90^\\circ"),
    ("26", "25\\%"),
    ("6.022\\times10^{22}", "6.022 \\times 10^{23}"),  # scientific notation
    ("6\\sqrt{5}", "7\\sqrt5"),  # radicals
    ("\\sqrt{5}", "5"),
    ("3\\pi", "9\\pi"),  # pi
    ("9", "9\\pi"),
    ("x^2+x-6", "x^2 - x - 6"),  # expressions
    ("(x-2)(x+3)", "x^2 - x - 6"),
    ("x+2", "x+1"),
    ("x = 4", "3"),
    ("1.49", "1.5"),
    ("100", "1000"),
    ("2,3", "23"),
    ("", "5"),
]


@pytest.mark.parametrize("answer,gold", EQUIVALENT)
def test_math_equivalent_pairs(answer, gold):
    assert math_equivalent(answer, gold)
    assert grade_math(f"So the answer is $\\boxed{{{answer}}}$.", gold).correct


@pytest.mark.parametrize("answer,gold", NOT_EQUIVALENT)
def test_math_not_equivalent_pairs(answer, gold):
    assert not math_equivalent(answer, gold)
    grade = grade_math(f"So the answer is $\\boxed{{{answer}}}$.", gold)
    assert grade.parsed and not grade.correct


def test_text_answers_are_not_erased():
    assert quick_verdict("\\text{Bob}", "\\text{Evelyn}") is not True
    assert quick_verdict("", "") is False  # nothing boxed is never a match, even against an empty gold


def test_every_reference_solution_grades_correct_against_its_own_answer():
    from workers.tasks.jsonl import read_jsonl

    examples = read_jsonl("math", REPO / "tests" / "data" / "math_sample.jsonl", "train", 0)
    assert len(examples) == 32
    grader = Grader("math", timeout_s=10)
    try:
        grades = grader.grade([e.solution for e in examples], [e.answer for e in examples])
    finally:
        grader.close()
    assert all(g.correct and g.parsed and not g.timed_out for g in grades), \
        [(e.example_id, g) for e, g in zip(examples, grades) if not g.correct]
    answers = {e.example_id: e.answer for e in examples}
    assert answers["train-24"] == "14"  # the last \boxed counts
    assert answers["train-25"] == "1"  # \fbox
    assert answers["train-27"] == "7"  # '\boxed 7'


@pytest.mark.parametrize("workers", [1, 3])
def test_grader_batch_agrees_with_single_grading(workers):
    completions = [f"$\\boxed{{{a}}}$" for a, _ in EQUIVALENT + NOT_EQUIVALENT] + ["no final answer"]
    golds = [g for _, g in EQUIVALENT + NOT_EQUIVALENT] + ["5"]
    grader = Grader("math", timeout_s=10, workers=workers)
    try:
        grades = grader.grade(completions, golds)
    finally:
        grader.close()
    assert [g.correct for g in grades] == [True] * len(EQUIVALENT) + [False] * (len(NOT_EQUIVALENT) + 1)
    assert not grades[-1].parsed and all(g.parsed for g in grades[:-1])


PATHOLOGICAL = "9^{9^{9^{9}}}"  # sympy computes the power tower as a big integer, in C: minutes


def test_pathological_answer_is_timed_out_and_the_grader_goes_on():
    """Graded wrong and counted as a timeout; the answers after it are still graded. What it costs in seconds
    (about the time limit): bench/grading.py, `pathological`."""
    grader = Grader("math", timeout_s=1.0)
    try:
        grades = grader.grade([f"$\\boxed{{{PATHOLOGICAL}}}$", "$\\boxed{\\frac{4}{2}}$", "$\\boxed{3}$"],
                              ["2", "2.0", "\\sqrt{9}"])
    finally:
        grader.close()
    assert (grades[0].correct, grades[0].parsed, grades[0].timed_out) == (False, True, True)
    assert [g.correct for g in grades[1:]] == [True, True] and not any(g.timed_out for g in grades[1:])


def test_time_limit_holds_off_the_main_thread():
    """Sampler actors may grade on a worker thread, where no signal-based timeout could fire."""
    out = {}

    def grade():
        verifier = MathVerifier(timeout_s=1.0)
        try:
            out["verdicts"] = verifier.equivalent([(PATHOLOGICAL, "1"), ("\\frac12", "0.5")])
        finally:
            verifier.close()

    thread = threading.Thread(target=grade)
    thread.start()
    thread.join(timeout=120)
    assert out["verdicts"] == [None, True]


def test_unknown_task_has_no_grader():
    with pytest.raises(ValueError, match="no grader"):
        Grader("mmlu")


def test_a_registered_grader_grades_the_splits_that_name_it():
    """Grader reads the registry: GSM8k's, MATH's and a task module's own grader (choices, registered when
    workers.tasks is imported) by name; one registered later grades as soon as it is."""
    from workers.grading import GRADERS, Grade, register_grader
    import workers.tasks  # noqa: F401  (registers the task modules' graders)

    assert {"gsm8k", "math", "choices"} <= set(GRADERS)
    assert Grader("gsm8k").grade(["so #### 5"], ["5"])[0].correct

    @register_grader("exact")
    def grade_exact(completion: str, gold: str) -> Grade:
        return Grade(completion.strip() == gold, True, completion.strip())

    try:
        assert [g.correct for g in Grader("exact").grade([" 7", "8"], ["7", "7"])] == [True, False]
    finally:
        GRADERS.pop("exact")


def test_grader_remembers_decided_pairs_but_not_timeouts():
    grader = Grader("math", timeout_s=1.0)
    try:
        grader.grade([f"$\\boxed{{{PATHOLOGICAL}}}$", "$\\boxed{(x+2)(x-3)}$"], ["2", "x^2 - x - 6"])
        assert grader.known == {("(x+2)(x-3)", "x^2 - x - 6"): True}
        grader.close()  # a remembered pair needs no child process
        assert grader.grade(["$\\boxed{(x+2)(x-3)}$"], ["x^2 - x - 6"])[0].correct
        assert all(v._proc is None for v in grader.verifiers)
    finally:
        grader.close()
