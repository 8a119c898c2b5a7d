"""Graders: final-answer extraction and equivalence for GSM8k-style and MATH-style solutions.

Each grader returns a Grade; output with no recognizable final answer is wrong and counted as unparsed.
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Grade:
    correct: bool
    parsed: bool
    extracted: str | None
    timed_out: bool = False  # equivalence was not decided within the time limit: graded wrong


# Every grader by name (name -> grade(completion, gold) -> Grade): GSM8k's and MATH's here, a task module's own
# (choices) registered when it is imported (importing workers.tasks does that), so grading imports no task.
GRADERS: dict[str, Callable[[str, str], Grade]] = {}


def register_grader(name: str):
    """Decorator: `grade(completion, gold) -> Grade` as the grader of splits whose `grader` is `name`."""
    def register(grade: Callable[[str, str], Grade]) -> Callable[[str, str], Grade]:
        GRADERS[name] = grade
        return grade

    return register


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


@register_grader("gsm8k")
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
    if rest.startswith("\\boxed "):
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


_TEXT = r"\\(?:text|textbf|mbox|mathrm)\{\s*([^{}]*?)\s*\}"
_UNIT_AFTER_NUMBER = re.compile(r"(?<=[\d}])\s*" + _TEXT)  # '10\text{ cm}': a unit, dropped
_TEXT_WRAPPER = re.compile(_TEXT)  # '\text{Evelyn}': the answer itself, unwrapped
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")  # \frac12 -> \frac{1}{2}
_FRAC_SHORT_NUM = re.compile(r"\\frac(\d)\{")  # \frac1{10} -> \frac{1}{10}
_FRAC_SEMI = re.compile(r"\\frac\{(\w+)\}(\d)")  # \frac{1}2 -> \frac{1}{2}
_SQRT_SHORT = re.compile(r"\\sqrt(\w)")


def normalize_math(answer: str) -> str:
    """Canonical string form of a MATH answer (after Hendrycks et al.'s normalization, extended).

    Two answers with the same canonical form are equivalent; different forms may still be (math-verify
    decides those).
    """
    s = answer.strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\degree", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _UNIT_AFTER_NUMBER.sub("", s)
    s = _TEXT_WRAPPER.sub(r"\1", s)
    s = s.replace(" ", "")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_SHORT_NUM.sub(r"\\frac{\1}{", s)
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
# commas only as thousands separators: '2,3' is a list of answers, '1,000' a number
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d+)?|-?\d+\.")


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
    return normalize_number(answer) if _PLAIN_NUMBER.fullmatch(answer) else None


def quick_verdict(answer: str, gold: str) -> bool | None:
    """The cheap check, decided when it can be: True for equal canonical strings or equal exact rationals,
    False for two different exact rationals, None when only symbolic equivalence can tell."""
    na, nb = normalize_math(answer), normalize_math(gold)
    if na == nb and na:
        return True
    va, vb = math_value(na), math_value(nb)
    if va is not None and vb is not None:
        return va == vb
    return False if not na else None



def _math_verify_parse(latex: str) -> list:
    from math_verify import LatexExtractionConfig, parse

    # The answer is already cut out of its \boxed{}; boxing it again makes math-verify read it as LaTeX.
    return parse("$\\boxed{" + latex + "}$", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                 parsing_timeout=None)


def math_verify_equivalent(answer: str, gold: str) -> bool:
    """Symbolic equivalence by math-verify (no time limit of its own: see MathVerifier)."""
    from math_verify import verify

    return verify(_math_verify_parse(gold), _math_verify_parse(answer), timeout_seconds=None)


def math_equivalent(answer: str, gold: str) -> bool:
    """Whether a MATH answer equals the gold answer: the cheap check first, then math-verify."""
    verdict = quick_verdict(answer, gold)
    return verdict if verdict is not None else math_verify_equivalent(answer, gold)


@register_grader("math")
def grade_math(completion: str, gold: str) -> Grade:
    """One sample, graded in this process without a time limit (tests, notebooks); the pool grades through
    `Grader`, which bounds each answer's time."""
    extracted = last_boxed(completion)
    if extracted is None:
        return Grade(False, False, None)
    return Grade(math_equivalent(extracted, gold), True, extracted)


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


# ------------------------------------------------------------------------- grading with a time limit
class MathVerifier:
    """math-verify in a child process, each answer bounded by `timeout_s`.

    sympy can spend minutes, or memory without end, on one pathological answer (`9^{9^{9^{9}}}` is a big
    integer power computed in C, where no signal reaches): only a process that can be killed bounds it.
    The child serves batches over a pipe, one result line per answer; a result that is late, or a child that
    dies, makes that answer wrong and timed out, and a fresh child takes the rest of the batch.
    """

    def __init__(self, timeout_s: float, start_timeout_s: float = 120.0):
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._proc = None
        self._buffer = b""

    def equivalent(self, pairs: list[tuple[str, str]]) -> list[bool | None]:
        """For each (answer, gold): True/False, or None when it ran out of time."""
        results: list[bool | None] = []
        while len(results) < len(pairs):
            pending = pairs[len(results):]
            self.start()
            self._proc.stdin.write((json.dumps(pending) + "\n").encode())
            self._proc.stdin.flush()
            for _ in pending:
                line = self._read_line(time.monotonic() + self.timeout_s)
                if line is None:  # late or dead: this answer is timed out, the rest go to a new child
                    self.close()
                    results.append(None)
                    break
                results.append(line == b"1")
        return results

    def start(self) -> None:
        """Start the child process unless it is running (a sampler does this once, for its whole life)."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen([sys.executable, "-m", "workers.grading"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._buffer = b""
        if self._read_line(time.monotonic() + self.start_timeout_s) != b"ready":
            self.close()
            raise RuntimeError("the math-verify grading process did not start")

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # the child died
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __del__(self):
        self.close()


def _serve_math_verify() -> None:
    """The child's loop: a JSON list of [answer, gold] pairs per line in, one '1'/'0' line per pair out."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns once that its own timeouts are off: ours are on
    import math_verify  # noqa: F401  (imported before 'ready', so the first answer's time is its own)

    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        for answer, gold in json.loads(line):
            try:
                ok = math_verify_equivalent(answer, gold)
            except Exception:  # an answer math-verify cannot handle is not equivalent
                ok = False
            out.write(b"1\n" if ok else b"0\n")
            out.flush()


class Grader:
    """Grades a task's samples by the grader registered under `task` (GRADERS), in place; MATH by the cheap
    check, then math-verify with a time limit in `workers` child processes side by side (sympy is
    single-threaded; a GPU node's sampler has cores)."""

    def __init__(self, task: str, timeout_s: float = 5.0, workers: int = 1):
        if task not in GRADERS:
            raise ValueError(f"no grader for task {task!r}")
        self.task = task
        self.verifiers = [MathVerifier(timeout_s) for _ in range(workers)] if task == "math" else []
        # a model's answers repeat from checkpoint to checkpoint: math-verify decides each pair once
        self.known: dict[tuple[str, str], bool | None] = {}

    def grade(self, completions: list[str], golds: list[str]) -> list[Grade]:
        if self.task != "math":  # MATH's grade_math is replaced by the batched, time-bounded check below
            return [GRADERS[self.task](c, g) for c, g in zip(completions, golds)]
        extracted = [last_boxed(c) for c in completions]
        # k samples of a question often box the same answer: each distinct (answer, gold) is decided once,
        # by the cheap check where it can, else by math-verify
        verdicts = {pair: quick_verdict(*pair) for pair in zip(extracted, golds) if pair[0] is not None}
        for pair, verdict in verdicts.items():
            if verdict is None and self.known.get(pair) is not None:
                verdicts[pair] = self.known[pair]
        undecided = [pair for pair, verdict in verdicts.items() if verdict is None]
        if undecided:
            decided = self._verify(undecided)
            verdicts.update(zip(undecided, decided))
            if len(self.known) > 200_000:
                self.known.clear()
            # a timed-out pair is not remembered: the next checkpoint gives it another chance
            self.known.update((pair, v) for pair, v in zip(undecided, decided) if v is not None)
        grades = []
        for answer, gold in zip(extracted, golds):
            if answer is None:
                grades.append(Grade(False, False, None))
                continue
            verdict = verdicts[(answer, gold)]
            grades.append(Grade(bool(verdict), True, answer, timed_out=verdict is None))
        return grades

    def _verify(self, pairs: list[tuple[str, str]]) -> list[bool | None]:
        n = min(len(self.verifiers), len(pairs))
        if n == 1:
            return self.verifiers[0].equivalent(pairs)
        from concurrent.futures import ThreadPoolExecutor

        chunks = [pairs[i::n] for i in range(n)]  # threads only wait on their child's pipe
        with ThreadPoolExecutor(n) as pool:
            parts = list(pool.map(MathVerifier.equivalent, self.verifiers[:n], chunks))
        out: list[bool | None] = [None] * len(pairs)
        for i, part in enumerate(parts):
            out[i::n] = part
        return out

    def close(self) -> None:
        for verifier in self.verifiers:
            verifier.close()


if __name__ == "__main__":
    _serve_math_verify()
