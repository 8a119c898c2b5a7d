"""The built-in task generator and the JSONL loaders."""
import json

import pytest

from workers.grading import grade_gsm8k
from workers.tasks import PromptFormat, load_task
from workers.tasks.jsonl import DatasetFileError, read_jsonl
from workers.tasks.synthetic import make_problem, make_splits, traces


def test_seeded_and_disjoint():
    a, b = make_splits(seed=3, n_train=200, n_test=100), make_splits(seed=3, n_train=200, n_test=100)
    assert [e.solution for e in a.train] == [e.solution for e in b.train]
    assert {e.question for e in a.train}.isdisjoint({e.question for e in a.test})
    assert len({e.question for e in a.train}) == 200
    assert make_splits(seed=4, n_train=5, n_test=5).train[0].question != a.train[0].question


def test_every_trace_is_a_valid_solution_and_they_differ():
    import random

    rng = random.Random(0)
    for _ in range(200):
        problem = make_problem(rng, 2, 4, 10)
        all_traces = traces(problem)
        assert len(set(all_traces)) == len(all_traces) >= 3
        for trace in all_traces:
            assert grade_gsm8k(trace, str(problem.answer)).correct
            # Every equation in the trace is true arithmetic.
            for eq in trace.replace("\n", " ").split(". "):
                if " = " in eq and ("+" in eq or " - " in eq):
                    lhs, rhs = eq.split(" = ")[-2:]
                    lhs = lhs.split()[-3:]
                    value = int(lhs[0]) + (int(lhs[2]) if lhs[1] == "+" else -int(lhs[2]))
                    assert value == int(rhs.rstrip(".").split()[0])


def test_reference_is_one_of_the_traces_and_difficulty_is_configurable():
    splits = make_splits(seed=0, n_train=50, n_test=10, min_steps=4, max_steps=4, max_number=50)
    for e in splits.train:
        assert e.solution.endswith(f"#### {e.answer}")
        assert e.question.count("Then") == 3


def test_train_fraction_subsamples_train_only():
    full = load_task("synthetic", seed=0, train_fraction=1.0, n_train=100, n_test=20)
    half = load_task("synthetic", seed=0, train_fraction=0.5, n_train=100, n_test=20)
    assert len(half.train) == 50 and len(half.test) == 20
    assert {e.example_id for e in half.train} <= {e.example_id for e in full.train}


def test_prompt_format_defaults():
    fmt = PromptFormat()
    assert fmt.prompt("Q?") == "Q?\nAnswer:"
    assert fmt.target("S #### 1") == " S #### 1\nDone."
    assert PromptFormat(answer_prefix="First").prompt("Q?") == "Q?\nAnswer: First"


def test_gsm8k_and_math_jsonl(tmp_path):
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(json.dumps({"question": "Q1", "answer": "3+4=<<3+4=7>>7\n#### 7"}) + "\n\n"
                   + json.dumps({"question": "Q2", "answer": "#### 1,000"}) + "\n")
    examples = read_jsonl("gsm8k", gsm, "train", 0)
    assert [e.answer for e in examples] == ["7", "1,000"]
    math = tmp_path / "math.jsonl"
    math.write_text(json.dumps({"problem": "P", "solution": "so $\\boxed{\\frac{1}{2}}$"}) + "\n")
    splits = load_task("math", seed=0, train_fraction=1.0, n_train=0, n_test=0, path=str(math), test_path=str(math))
    assert splits.grader == "math" and splits.train[0].answer == "\\frac{1}{2}"


@pytest.mark.parametrize("content,message", [
    ('{"question": "Q"}\n', "line 1: missing field 'answer'"),
    ('{"question": "Q", "answer": "no marker"}\n', "line 1: reference solution has no '#### N'"),
    ('{"question": "Q", "answer": "#### 1"}\nnot json\n', "line 2: not JSON"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetFileError, match=message):
        read_jsonl("gsm8k", path, "train", 0)


# ------------------------------------------------------------------------------------------ the registries
def test_each_task_registers_its_name_kind_and_grader_in_one_place():
    """The registry is what every stage asks: the conf/task presets name exactly the registered tasks, each
    task's grader is a registered grader, and a generated task's splits name that grader."""
    from orchestrator.config import CONF_DIR
    from workers.grading import GRADERS
    from workers.tasks import TASKS, generated_tasks

    assert list(TASKS) == ["synthetic", "skills", "choices", "gsm8k", "math"]
    assert {p.stem for p in (CONF_DIR / "task").glob("*.yaml")} == set(TASKS)
    assert generated_tasks() == {"synthetic": "workers.tasks.synthetic", "skills": "workers.tasks.skills",
                         "choices": "workers.tasks.choices"}
    for name, entry in TASKS.items():
        assert entry.grader in GRADERS, name
        if entry.generated:
            assert load_task(name, seed=0, train_fraction=1.0, n_train=4, n_test=2).grader == entry.grader


def test_a_registered_task_is_loaded_validated_and_gets_a_base_model():
    """A new task module needs its decorator only: load_task builds it, task.name accepts it, the tiny base
    model is built for it; a name nobody registered is refused in one line listing the registered ones."""
    from orchestrator.config import ConfigError, compose_config, validate
    from workers.tasks import TASKS, generator, register_task
    from workers.tasks.example import Example, Splits

    @register_task("toy", generated=True, grader="gsm8k")
    def make_splits(seed: int, n_train: int, n_test: int, **difficulty) -> Splits:
        make = [Example(f"{split}-{i}", f"{i} + {seed}?", f"#### {i + seed}", str(i + seed))
                for split, n in (("train", n_train), ("test", n_test)) for i in range(n)]
        return Splits(make[:n_train], make[n_train:], "gsm8k")

    try:
        splits = load_task("toy", seed=2, train_fraction=1.0, n_train=3, n_test=1, min_steps=2)
        assert [e.answer for e in splits.train] == ["2", "3", "4"] and splits.grader == "gsm8k"
        assert generator("toy").__name__ == __name__
        validate(compose_config(["task.name=toy"]))
    finally:
        TASKS.pop("toy")
    with pytest.raises(ConfigError, match=r"^task.name='toy': must be synthetic, skills, choices, gsm8k or math$"):
        validate(compose_config(["task.name=toy"]))
    with pytest.raises(ValueError, match="unknown task 'toy'"):
        load_task("toy", seed=2, train_fraction=1.0, n_train=3, n_test=1)
