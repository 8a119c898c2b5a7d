"""The `skills` built-in task: seeded and disjoint, true arithmetic in every reference, skills of uneven
frequency with the same distribution in train and test, per-example wording the question does not determine,
questions that parse back, and curation's generator keeping a picked example's skills."""
import collections
import random
import re

import pytest

from workers.grading import grade_gsm8k
from workers.tasks import load_task
from workers.tasks import skills

EQUATION = re.compile(r"(\d+) ([-+x/]) (\d+) = (\d+)")


def test_seeded_disjoint_and_loaded_by_name():
    a = skills.make_splits(seed=3, n_train=300, n_test=100)
    assert [e.solution for e in a.train] == [e.solution for e in skills.make_splits(3, 300, 100).train]
    assert {e.question for e in a.train}.isdisjoint({e.question for e in a.test})
    assert len({e.question for e in a.train}) == 300
    loaded = load_task("skills", seed=3, train_fraction=1.0, n_train=300, n_test=100, min_steps=2, max_steps=4,
                       max_number=20)
    assert loaded.train == a.train and loaded.grader == "gsm8k"


def test_every_reference_is_true_arithmetic_ending_in_the_answer():
    for example in skills.make_examples(0, 400, "check", max_number=12):
        assert grade_gsm8k(example.solution, example.answer).correct
        equations = EQUATION.findall(example.solution)
        assert len(equations) >= 2
        for left, op, right, result in equations:
            value = {"+": int(left) + int(right), "-": int(left) - int(right), "x": int(left) * int(right),
                     "/": int(left) // int(right)}[op]
            assert value == int(result) and (op != "/" or int(left) % int(right) == 0), example.solution
        problem = skills.parse_problem(example.question)
        assert str(problem.answer) == example.answer


def test_skills_are_uneven_and_train_and_test_share_their_distribution():
    splits = skills.make_splits(seed=0, n_train=2000, n_test=2000, min_steps=2, max_steps=4, max_number=12)

    def shares(examples):
        counts = collections.Counter(k for e in examples for k in skills.parse_problem(e.question).skills)
        return {k: counts[k] / sum(counts.values()) for k in skills.SKILLS}

    train, test = shares(splits.train), shares(splits.test)
    assert train["add"] > train["sub"] > train["boxes"] > train["times"] > train["share"] > 0.02
    assert max(abs(train[k] - test[k]) for k in skills.SKILLS) < 0.03


def test_the_wording_of_a_reference_is_the_examples_own():
    """The same problem written twice gets different references (what a model cannot infer from the
    question), with several nats of choice per solution: memorizing one is visible in its NLL."""
    problem = skills.make_problem(random.Random(1), 3, 3, 12)
    texts = {skills.solution_text(problem, random.Random(seed)) for seed in range(200)}
    assert len(texts) >= 190
    assert skills.solution_entropy_nats(3) > 15
    first_words = collections.Counter(t.split(".")[0] for t in texts)
    assert len(first_words) >= 5


def test_questions_parse_back_and_other_text_is_refused():
    for example in skills.make_examples(5, 200, "parse"):
        assert skills.question_text(skills.parse_problem(example.question)) == example.question
    with pytest.raises(ValueError, match="not a skills-task"):
        skills.parse_problem("Ava has 3 apples. She eats 2 apples. How many apples does Ava have now?")


def test_new_examples_keep_the_picked_examples_skills():
    train = skills.make_examples(0, 50, "train")
    exclude = {e.question for e in train}
    new = skills.new_examples(7, "c", [*train[:20], None, None], exclude)
    assert len(new) == 22 and not {e.question for e in new} & exclude
    assert len({e.question for e in new}) == 22
    for like, made in zip(train[:20], new):
        assert skills.parse_problem(made.question).skills == skills.parse_problem(like.question).skills
        assert grade_gsm8k(made.solution, made.answer).correct
    assert new == skills.new_examples(7, "c", [*train[:20], None, None], exclude)  # seeded


def test_the_tiny_base_model_is_pretrained_on_the_tasks_own_text(tmp_path):
    """task.name=skills builds its base model from skills problems (without the '#### N' line)."""
    import json

    from workers.settings import BaseStage
    from workers.base_model import build_base_model

    stage = BaseStage(n_examples=80, epochs=1, batch_size=40, vocab_size=600, hidden_size=32, num_layers=1,
                      num_heads=2, max_positions=256)
    out = build_base_model(tmp_path / "base", stage, {"name": "skills", "min_steps": 2, "max_steps": 4,
                                                      "max_number": 12}, {"question_suffix": "\nAnswer:",
                                                                          "stop": "\nDone."}, threads=1, log=lambda _: None)
    vocabulary = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert any("box" in token for token in vocabulary)  # a word only the skills task writes
    assert (out / "config.json").is_file()


def _small_base(out, threads: int, seed: int = 0, log=lambda _: None):
    """The driver's way: a child process with MKL in strict mode."""
    from workers.settings import BaseStage
    from workers.base_model import build_base_model_reproducibly

    stage = BaseStage(n_examples=64, epochs=1, batch_size=16, seed=seed)  # the default model's sizes
    return build_base_model_reproducibly(out, stage, {"name": "skills", "min_steps": 2, "max_steps": 4, "max_number": 12},
                                         {"question_suffix": "\nAnswer:", "stop": "\nDone."}, threads=threads,
                                         log=log)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_a_base_build_is_deterministic_whatever_the_thread_count_and_prints_only_its_progress(tmp_path, capfd,
                                                                                            monkeypatch):
    """Same seed, same tokenizer and the same weights bit for bit, built with 2 or 1 threads: a fresh store
    rebuilds the cached base model exactly, so a rerun from scratch gives the same figures. (Without MKL's
    strict mode, 1 and 2 threads gave different weights on this machine's AVX-512 CPU.) Another seed gives other
    weights. The build's child process says nothing on the terminal but its progress: no DeepSpeed accelerator
    warning, no transformers bar (the first lines a new user sees from `make sweep`). Three builds, one test:
    each is a process that imports torch, transformers and DeepSpeed (~12 s of 2 cores)."""
    import torch

    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    lines = []
    first, other_threads = _small_base(tmp_path / "a", 2, log=lines.append), _small_base(tmp_path / "c", 1)
    out, err = capfd.readouterr()
    assert lines and all(line.startswith("base model: step ") for line in lines)
    assert out == "" and err == "", err
    assert (first / "tokenizer.json").read_bytes() == (other_threads / "tokenizer.json").read_bytes()
    a, c = _weights(first), _weights(other_threads)
    assert a.keys() == c.keys()
    assert all(torch.equal(a[name], c[name]) for name in a)
    other_seed = _weights(_small_base(tmp_path / "d", 2, seed=1))
    assert not all(torch.equal(a[name], other_seed[name]) for name in a)


def test_references_longer_than_the_sampler_may_write_are_named_before_the_sweep(tiny_model_dir):
    """A sample cut at sampler.max_new_tokens never reaches its '#### N' line and is graded wrong: the driver
    says how many references are that long and what limit covers them; a limit that covers them says nothing."""
    from orchestrator.sweep import cut_answers_note, plan

    _, _, specs = plan(["task=skills", "task.n_train=32", "task.n_test=32", "sweep=small"])
    models = {spec.run_id: str(tiny_model_dir) for spec in specs}
    note = cut_answers_note(specs, models, 64)
    assert note is not None and "task skills's reference solutions are longer than sampler.max_new_tokens=64" in note
    suggested = int(note.rsplit("sampler.max_new_tokens=", 1)[1].split()[0])
    assert suggested > 64 and cut_answers_note(specs, models, suggested) is None
    assert note.count("task skills") == 1  # one line per task and model, not per trial
