"""Benchmark: MATH grading speed (answers/s) on real-format MATH solutions, and its share of evaluation time.

Completions are made from tests/data/math_sample.jsonl as a model's samples look: the reference solution
(correct), the same solution boxing another problem's answer (wrong, and mostly a symbolic comparison),
another problem's whole solution, and a solution cut off before its final answer (unparsed). Apart: the seconds
one answer sympy cannot decide costs (about the grader's time limit) and that the answers after it are graded.
Called by bench/evaluation.py, which writes everything to one bench.json.
"""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from workers.grading import Grader, last_boxed
from workers.tasks.jsonl import read_jsonl

MATH_SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "math_sample.jsonl"
PATHOLOGICAL = "9^{9^{9^{9}}}"  # sympy computes the power tower as a big integer, in C: minutes without a limit


def math_completions(k: int = 8, seed: int = 0) -> tuple[list[str], list[str]]:
    """(completions, gold answers): k samples for each problem of the MATH sample file."""
    examples = read_jsonl("math", MATH_SAMPLE, "train", 0)
    rng = random.Random(seed)
    completions, golds = [], []
    for example in examples:
        for j in range(k):
            other = rng.choice([e for e in examples if e is not example])
            kind = j % 4
            if kind == 0:
                text = example.solution
            elif kind == 1:  # the right working, the wrong final answer
                boxed = last_boxed(example.solution)
                text = example.solution.replace("{" + boxed + "}", "{" + other.answer + "}")
            elif kind == 2:
                text = other.solution
            else:
                text = example.solution[: example.solution.rfind("\\boxed")]
            completions.append(text)
            golds.append(example.answer)
    return completions, golds


def bench_grading(repeats: int, completion_seconds: dict[str, float], workers: int = 1) -> dict:
    """answers/s with a fresh grader per run (its child process started outside the timing, no verdicts
    remembered from earlier checkpoints); with the evaluation time per completion of each model measured
    elsewhere, grading's share of a checkpoint's evaluation."""
    completions, golds = math_completions()
    times, timeouts = [], 0
    for _ in range(repeats):
        grader = Grader("math", timeout_s=5.0, workers=workers)
        for verifier in grader.verifiers:  # a sampler starts them once, for its whole life
            verifier.start()
        start = time.perf_counter()
        grades = grader.grade(completions, golds)
        times.append(time.perf_counter() - start)
        timeouts += sum(g.timed_out for g in grades)
        grader.close()
    seconds = statistics.median(times)
    per_answer = seconds / len(completions)
    out = {"answers": len(completions), "workers": workers, "grading_s": seconds, "runs_s": times,
           "math_answers_per_s": len(completions) / seconds, "timeouts": timeouts,
           "correct_frac": sum(g.correct for g in grades) / len(grades),
           "unparsed_frac": sum(not g.parsed for g in grades) / len(grades)}
    out["pathological"] = bench_pathological()
    out["eval_seconds_per_completion"] = completion_seconds
    out["grading_share_of_eval"] = {model: per_answer / (per_answer + seconds)
                                    for model, seconds in completion_seconds.items()}
    return out


def bench_pathological(timeout_s: float = 1.0) -> dict:
    """Seconds one answer that sympy cannot decide in time costs the grader (its time limit, then a fresh child
    process for the answers after it; the first child is started outside the timing), and whether it was
    counted as a timeout and the next answer graded."""
    grader = Grader("math", timeout_s=timeout_s)
    try:
        for verifier in grader.verifiers:
            verifier.start()
        start = time.perf_counter()
        grades = grader.grade([f"$\\boxed{{{PATHOLOGICAL}}}$", "$\\boxed{\\frac{4}{2}}$"], ["2", "2.0"])
        seconds = time.perf_counter() - start
    finally:
        grader.close()
    return {"timeout_s": timeout_s, "seconds": seconds, "timed_out": grades[0].timed_out,
            "next_answer_correct": grades[1].correct}
