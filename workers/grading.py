"""Graders: final-answer extraction and equivalence for GSM8k-style and MATH-style solutions.

Each grader returns a Grade; output with no recognizable final answer is wrong and counted as unparsed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Grade:
    correct: bool
    parsed: bool
    extracted: str | None


# ----------------------------------------------------------------------------------------------- GSM8k
_NUMBER = r"-?\$?\s*-?[\d,]*\.?\d+"
_HASH_ANSWER = re.compile(r"####\s*(" + _NUMBER + r")")
_THE_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[:\s]*\$?\s*(" + _NUMBER + r")")


def normalize_number(text: str) -> Fraction | None:
    """'$1,234.50.' -> Fraction(2469, 2); None when it is not a number."""
    cleaned = text.strip().rstrip(".").replace(",", "").replace("$", "").replace(" ", "")
    if cleaned.endswith("%"):
        cleaned = cleaned[:-1]
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_gsm8k_answer(completion: str) -> str | None:
    """The final answer after the last '####', else after 'The answer is'; None if neither is present."""
    for pattern in (_HASH_ANSWER, _THE_ANSWER_IS):
        matches = pattern.findall(completion)
        if matches:
            return matches[-1].strip()
    return None


def grade_gsm8k(completion: str, gold: str) -> Grade:
    extracted = extract_gsm8k_answer(completion)
    if extracted is None:
        return Grade(False, False, None)
    value, target = normalize_number(extracted), normalize_number(gold)
    if value is None:
        return Grade(False, False, extracted)
    return Grade(target is not None and value == target, True, extracted)


# ------------------------------------------------------------------------------------------------ MATH
def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}, or '\\boxed 5'), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:]
    if rest.startswith("\\boxed ") :
        return rest[len("\\boxed "):].split("$")[0].strip()
    brace = rest.find("{")
    if brace < 0:
        return None
    depth = 0
    for i, ch in enumerate(rest[brace:], start=brace):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return rest[brace + 1 : i]
    return None


_UNIT_TEXT = re.compile(r"\\(?:text|mbox|mathrm)\{\s*[a-zA-Z ]*\}")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")  # \frac12 -> \frac{1}{2}
_FRAC_SEMI = re.compile(r"\\frac\{(\w+)\}(\d)")  # \frac{1}2 -> \frac{1}{2}
_SQRT_SHORT = re.compile(r"\\sqrt(\w)")


def normalize_math(answer: str) -> str:
    """Canonical string form of a MATH answer (after Hendrycks et al.'s normalization, extended)."""
    s = answer.strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\degree", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _UNIT_TEXT.sub("", s)
    s = s.replace(" ", "")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_SEMI.sub(r"\\frac{\1}{\2}", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    if s.startswith("x=") or s.startswith("y=") or s.startswith("k="):
        s = s[2:]
    s = s.rstrip(".")
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{.", "{0.")
    return s


_LATEX_FRACTION = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")


def math_value(answer: str) -> Fraction | None:
    """Exact rational value of a normalized answer that is a plain number or fraction."""
    m = _LATEX_FRACTION.match(answer)
    if m:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign else value
    if re.fullmatch(r"-?\d+/\d+", answer) and not answer.endswith("/0"):
        return Fraction(answer)
    return normalize_number(answer) if re.fullmatch(r"-?[\d,]*\.?\d+", answer) else None


def math_equivalent(a: str, b: str) -> bool:
    na, nb = normalize_math(a), normalize_math(b)
    if na == nb:
        return True
    va, vb = math_value(na), math_value(nb)
    return va is not None and vb is not None and va == vb


def grade_math(completion: str, gold: str) -> Grade:
    extracted = last_boxed(completion)
    if extracted is None:
        return Grade(False, False, None)
    return Grade(math_equivalent(extracted, gold), True, extracted)


GRADERS = {"gsm8k": grade_gsm8k, "math": grade_math}


def gold_answer_gsm8k(solution: str) -> str:
    answer = extract_gsm8k_answer(solution)
    if answer is None:
        raise ValueError("reference solution has no '#### N' final answer")
    return answer


def gold_answer_math(solution: str) -> str:
    answer = last_boxed(solution)
    if answer is None:
        raise ValueError("reference solution has no \\boxed{} final answer")
    return answer
