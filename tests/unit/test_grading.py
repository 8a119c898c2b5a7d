"""Graders on real-format answers, including the ugly ones."""
import pytest

from workers.grading import (extract_gsm8k_answer, gold_answer_gsm8k, gold_answer_math, grade_gsm8k, grade_math,
                             last_boxed, math_equivalent)

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
