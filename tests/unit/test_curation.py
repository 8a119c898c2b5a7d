"""Curation pieces: strategies' rankings, new data like the picks (generator, pool neighbours, a user command),
the curves and the efficiency ratio, the added-data file, the curation config."""
from __future__ import annotations

import dataclasses
import json
import random
import sys

import numpy as np
import pandas as pd
import pytest

from analysis.curate import (efficiency, efficiency_report, first_reach, mean_curves, per_seed_curves,
                             rank_examples)
from workers.tasks import Example, load_task
from workers.tasks.similar import NewDataError, from_command, from_pool
from workers.tasks.synthetic import (make_examples, new_examples, parse_problem, question_text,
                                     similar_problem)


# ------------------------------------------------------------------------------ the built-in task
@pytest.mark.parametrize("difficulty", [(2, 3, 10), (1, 6, 50)])
def test_parse_problem_inverts_question_text(difficulty):
    lo, hi, top = difficulty
    for example in make_examples(3, 500, "p", lo, hi, top):
        assert question_text(parse_problem(example.question)) == example.question


@pytest.mark.parametrize("question", ["Ava has 3 apples. How many apples does Ava have now?",
                                      "Ava has 3 apples. She eats 2 apples. How many apples does Ava have now?",
                                      "Ava has 3 apples. He buys 2 more apples. How many apples does Ava have now?",
                                      "Natalia sold clips to 48 of her friends in April."])
def test_parse_problem_refuses_other_text(question):
    with pytest.raises(ValueError, match="not a synthetic-task"):
        parse_problem(question)


def test_similar_problem_keeps_structure_and_range():
    rng = random.Random(0)
    for example in make_examples(1, 200, "s", 1, 5, 40):
        like = parse_problem(example.question)
        top = max(like.start, *(abs(c) for c, _ in like.changes))
        new = similar_problem(rng, like)
        assert [(c > 0, w) for c, w in new.changes] == [(c > 0, w) for c, w in like.changes]
        assert max(new.start, *(abs(c) for c, _ in new.changes)) <= top
        running = new.start
        for change, _ in new.changes:  # never below one item, as the task's own problems
            running += change
            assert running >= 1


def test_new_examples_are_new_and_like_their_models():
    train = make_examples(0, 64, "train", 2, 3, 10)
    likes = [train[0], train[0], None, train[5]] * 10
    exclude = {e.question for e in train}
    new = new_examples(7, "cur", likes, exclude, 2, 3, 10)
    assert len(new) == 40 and len({e.question for e in new}) == 40 and not exclude & {e.question for e in new}
    assert [e.example_id for e in new[:2]] == ["cur-0", "cur-1"]
    for example, like in zip(new, likes):
        problem = parse_problem(example.question)
        assert example.answer == str(problem.answer) and example.solution.endswith(f"#### {problem.answer}")
        if like is not None:
            assert len(problem.changes) == len(parse_problem(like.question).changes)
    assert new == new_examples(7, "cur", likes, exclude, 2, 3, 10)  # seeded
    assert new != new_examples(8, "cur", likes, exclude, 2, 3, 10)


# ------------------------------------------------------------------------------ strategies
def _scores() -> pd.DataFrame:
    return pd.DataFrame({"example_id": [f"e{i}" for i in range(6)],
                         "premem_train_acc": [0.5, 0.0, 0.0, 0.9, 0.0, 0.2],
                         "train_acc": [0.1, 0.6, 0.9, 0.3, 0.2, 0.0],
                         "ref_nll": [0.3, 0.1, 2.0, 0.5, 0.05, 1.0],
                         "ifd": [0.9, 0.2, 0.5, 1.1, 0.7, 0.3],
                         "solution_length": [120, 80, 300, 95, 200, 150]})


def test_rank_examples_by_strategy():
    scores = _scores()
    premem = rank_examples(scores, "premem", seed=0)
    assert set(premem[:3]) == {"e1", "e2", "e4"} and premem[3:] == ["e5", "e0", "e3"]
    assert rank_examples(scores, "low_train_acc", 0) == ["e5", "e0", "e4", "e3", "e1", "e2"]
    assert rank_examples(scores, "high_ref_nll", 0) == ["e2", "e5", "e3", "e0", "e1", "e4"]
    assert rank_examples(scores, "ifd", 0) == ["e3", "e0", "e4", "e2", "e5", "e1"]  # the paper's heuristics
    assert rank_examples(scores, "longest", 0) == ["e2", "e4", "e5", "e0", "e3", "e1"]
    assert sorted(rank_examples(scores, "iid", 0)) == sorted(scores["example_id"])
    # ties (and iid) in a seeded order: reproducible, and different across seeds
    orders = {tuple(rank_examples(scores, "premem", seed)[:3]) for seed in range(20)}
    assert len(orders) > 1 and rank_examples(scores, "premem", 4) == rank_examples(scores, "premem", 4)
    with pytest.raises(ValueError, match="unknown curation strategy 'loss'"):
        rank_examples(scores, "loss", 0)


# ------------------------------------------------------------------------------ curves, efficiency
def test_first_reach_interpolates():
    x, y = np.array([0, 32, 64, 128.0]), np.array([0.2, 0.25, 0.3, 0.4])
    assert first_reach(x, y, 0.2) == 0 and first_reach(x, y, 0.1) == 0
    assert first_reach(x, y, 0.35) == pytest.approx(96.0)
    assert first_reach(x, y, 0.3) == pytest.approx(64.0)
    assert np.isnan(first_reach(x, y, 0.41))
    # a dip does not count as reaching: the first crossing does
    assert first_reach(np.array([0, 10, 20.0]), np.array([0.1, 0.5, 0.3]), 0.3) == pytest.approx(5.0)


def _results() -> pd.DataFrame:
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02), (2, -0.02)):
        rows.append(("base", seed, 0, 0.20 + shift))
        rows += [("iid", seed, n, acc + shift) for n, acc in ((32, 0.25), (64, 0.30), (128, 0.40))]
        rows += [("premem", seed, n, acc + shift) for n, acc in ((32, 0.30), (64, 0.35))]
    return pd.DataFrame(rows, columns=["strategy", "seed", "examples_added", "test_acc"])


def test_curves_share_the_base_point_and_average_seeds():
    per_seed = per_seed_curves(_results())
    assert set(per_seed["strategy"]) == {"iid", "premem"}
    curves = mean_curves(per_seed)
    premem = curves[curves["strategy"] == "premem"]
    assert premem["examples_added"].tolist() == [0, 32, 64]
    assert premem["test_acc"].tolist() == pytest.approx([0.20, 0.30, 0.35])
    assert premem["std"].tolist() == pytest.approx([0.02] * 3)  # ddof 1 over (0, +0.02, -0.02)
    assert premem["n_seeds"].tolist() == [3, 3, 3]


def test_efficiency_ratio_of_mean_curves_and_per_seed():
    per_seed = per_seed_curves(_results())
    report = efficiency_report(per_seed, "premem")
    # premem reaches 0.35 with 64 examples; i.i.d. data reach 0.35 half-way from 64 (0.30) to 128 (0.40)
    assert report["budget"] == 64 and report["ratio"] == pytest.approx(1.5) and report["lower_bound"] is False
    assert report["ratio_by_seed"] == pytest.approx({0: 1.5, 1: 1.5, 2: 1.5})
    assert report["ratio_std"] == pytest.approx(0.0)
    # curated data the i.i.d. curve never reaches: the ratio is a lower bound (its largest budget over B)
    better = per_seed.copy()
    better.loc[(better["strategy"] == "premem") & (better["examples_added"] == 64), "test_acc"] = 0.9
    assert efficiency_report(better, "premem")["lower_bound"] is True
    assert efficiency_report(better, "premem")["ratio"] == pytest.approx(2.0)
    # worse than i.i.d.: fewer i.i.d. examples than B reach it
    curve = pd.DataFrame({"examples_added": [0, 64], "test_acc": [0.2, 0.25]})
    iid = pd.DataFrame({"examples_added": [0, 32, 64, 128], "test_acc": [0.2, 0.25, 0.3, 0.4]})
    assert efficiency(curve, iid, 64).ratio == pytest.approx(0.5)


# ------------------------------------------------------------------------------ JSONL tasks
POOL = [Example(f"p{i}", q, f"{q} #### {i}", str(i)) for i, q in enumerate([
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "A car drives 50 miles per hour for 2 hours. How far does it drive?",
    "Tom bakes 12 cookies and eats 3. How many cookies are left?",
    "Sara bakes 20 muffins and gives away 5. How many muffins are left?",
    "A rectangle is 4 meters by 6 meters. What is its area?",
    "A square garden has sides of 7 meters. What is its area?",
])]


def test_pool_neighbours_are_the_most_similar_unused_questions():
    like_speed = Example("t0", "A bus goes 40 miles per hour for 5 hours. How far does it go?", "", "200")
    like_area = Example("t1", "A rectangle is 3 meters by 9 meters. What is its area?", "", "27")
    new = from_pool([like_speed, like_speed, like_area], POOL, exclude=set(), seed=0, prefix="n")
    assert [e.question for e in new] == [POOL[0].question, POOL[1].question, POOL[4].question]
    assert [e.example_id for e in new] == ["n-0", "n-1", "n-2"] and new[0].answer == "0"
    # a pool question that is already a train or test question is never added
    new = from_pool([like_speed], POOL, exclude={POOL[0].question}, seed=0, prefix="n")
    assert new[0].question == POOL[1].question
    iid = from_pool([None] * 6, POOL, exclude=set(), seed=3, prefix="n")
    assert sorted(e.question for e in iid) == sorted(e.question for e in POOL)
    with pytest.raises(NewDataError, match="candidate pool has 6 questions .* 7 are needed"):
        from_pool([None] * 7, POOL, exclude=set(), seed=0, prefix="n")


WRITER = """
import json, sys
selected, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(line) for line in open(selected)]
with open(out, "w") as f:
    f.write(json.dumps({"question": rows[0]["question"], "answer": "repeat #### 1"}) + "\\n")
    for i, row in enumerate(rows[:n]):
        f.write(json.dumps({"question": "Like: " + row["question"] + f" ({i})", "answer": f"so #### {i}"}) + "\\n")
"""


def test_command_writes_new_examples_from_the_selected(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    train = [Example("t0", "How many legs do 3 cats have?", "3 x 4 = 12\n#### 12", "12"),
             Example("t1", "What is 5 + 5?", "10\n#### 10", "10")]
    command = f"{sys.executable} {script} {{selected}} {{out}} {{n}}"
    new = from_command(command, [train[1], None, train[1]], train, "gsm8k", {e.question for e in train}, 0, "c", 60)
    # the first row repeats a train question and is dropped; the rest are kept in order, graded by gold answer
    assert [e.question for e in new] == ["Like: What is 5 + 5? (0)", new[1].question, "Like: What is 5 + 5? (2)"]
    assert [e.answer for e in new] == ["0", "1", "2"] and new[0].example_id == "c-0"
    with pytest.raises(NewDataError, match=r"curation.command '.*' exited 3: boom"):
        from_command(f"{sys.executable} -c \"import sys; print('boom', file=sys.stderr); sys.exit(3)\"",
                     [train[0]], train, "gsm8k", set(), 0, "c", 60)
    with pytest.raises(NewDataError, match=r"wrote 1 new questions \(2 rows, the rest repeat .*\); 5 are needed"):
        from_command(f"{sys.executable} {script} {{selected}} {{out}} 1", [train[0]] * 5, train, "gsm8k",
                     {e.question for e in train}, 0, "c", 60)
    bad = tmp_path / "bad.py"
    bad.write_text("import sys; open(sys.argv[1], 'w').write('{\"question\": \"q\"}\\n')")
    with pytest.raises(NewDataError, match="line 1: missing field 'answer'"):
        from_command(f"{sys.executable} {bad} {{out}}", [train[0]], train, "gsm8k", set(), 0, "c", 60)


# ------------------------------------------------------------------------------ added data, config
@pytest.fixture
def finished_sweep(tmp_path):
    """A one-trial sweep in a store as the driver leaves it: config, plan and records (seeded, no training)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from orchestrator.config import compose_config
    from orchestrator.config import to_yaml
    from orchestrator.plan import expand_grid
    from tests.unit.records_factory import make_records

    store = tmp_path / "store"
    cfg = compose_config(["sweep=small", "sweep.grid.train.lr=[1e-3]", "task.n_train=16", "task.n_test=8",
                          f"store.root={store}"])
    spec = expand_grid(cfg, "small-1")[0]
    sweep_dir = store / "sweeps" / "small-1"
    (sweep_dir / "records" / spec.run_id).mkdir(parents=True)
    (sweep_dir / "config.yaml").write_text(to_yaml(cfg))
    (sweep_dir / "plan.json").write_text(json.dumps([dataclasses.asdict(spec)]))
    records = make_records(1, 2, 16, n_test=8).to_pandas()
    records["run_id"] = spec.run_id
    for step, rows in records.groupby("step"):
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False),
                       sweep_dir / "records" / spec.run_id / f"step_{step:06d}.original.parquet")
    return sweep_dir, store


def test_added_examples_join_the_train_split(tmp_path):
    added = tmp_path / "added.jsonl"
    rows = [{"example_id": "cur-0", "question": "Q?", "solution": "S\n#### 4", "answer": "4", "similar_to": "t"}]
    added.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = load_task("synthetic", seed=0, train_fraction=0.5, n_train=20, n_test=5)
    more = load_task("synthetic", seed=0, train_fraction=0.5, n_train=20, n_test=5, added_path=str(added))
    assert more.train[:-1] == plain.train and more.test == plain.test
    assert more.train[-1] == Example("cur-0", "Q?", "S\n#### 4", "4")
    added.write_text('{"example_id": "x", "question": "Q?"}\n')
    from workers.tasks.jsonl import DatasetFileError

    with pytest.raises(DatasetFileError, match="added.jsonl: line 1: missing field 'solution'"):
        load_task("synthetic", seed=0, train_fraction=1.0, n_train=5, n_test=5, added_path=str(added))


@pytest.mark.parametrize("overrides, message", [
    (["curation.strategies=[premem,loss]"], "curation.strategies='loss': must be one of premem, ifd, longest, low_train_acc"),
    (["curation.budgets=[]"], "curation.budgets=[]: must name at least one budget"),
    (["curation.budgets=[8,8]"], "curation.budgets=[8, 8]: must be distinct"),
    (["curation.seeds=[]"], "curation.seeds=[]: must be a non-empty list"),
    (["curation.rounds=0"], "curation.rounds=0: must be >= 1"),
    (["curation.select_fraction=0"], "curation.select_fraction=0.0: must be in (0, 1]"),
    (["curation.premem_at_most=1.5"], "curation.premem_at_most=1.5: must be in [0, 1] or null"),
    (["curation.similar=neighbors"], "curation.candidates=None: neighbors needs a candidate pool"),
    (["curation.similar=command"], "curation.command=None: the command that writes new examples"),
    (["curation.similar=nearest"], "curation.similar='nearest': must be one of auto, generator"),
    (["curation.candidates=/no/such.jsonl"], "curation.candidates='/no/such.jsonl': file does not exist"),
    (["curation.trial=9"], "curation.trial=9: the sweep has trials 0..0"),
    (["train.lr=-1"], "train.lr=-1.0: must be > 0"),
    (["task.n_train=5"], "task.n_train: only train*, sampler*, tracking*, cluster*"),
])
def test_bad_curation_input_is_one_line_and_exit_2(finished_sweep, overrides, message, capsys):
    from orchestrator.curate import main

    sweep_dir, store = finished_sweep
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    assert main([str(sweep_dir), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before  # nothing written


def test_bad_resume_input_is_one_line_and_exit_2(finished_sweep, capsys):
    """`curate --resume DIR`: a directory that holds no curation, or an override of what the curation planned,
    is one line naming it, exit 2, nothing written."""
    import json

    from orchestrator.curate import INVOCATION, main

    sweep_dir, store = finished_sweep
    curation = store / "curations" / "c-1"
    curation.mkdir(parents=True)
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    assert main(["--resume", str(store / "curations" / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {store / 'curations' / 'nothing'}:") and len(err.splitlines()) == 1
    (curation / INVOCATION).write_text(json.dumps({"source_sweep": str(sweep_dir), "overrides": [],
                                                   "curation_id": "c-1", "trial": "x"}))
    before.append((curation / INVOCATION).relative_to(store))
    assert main(["--resume", str(curation), "curation.budgets=[4]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: curation.budgets: only tracking.* and cluster.* can change when a curation is resumed "
                   "(its rounds are planned)")
    assert main(["--resume", str(curation)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: invocation.json: trial x is not a trial of {sweep_dir}"
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == sorted(before)  # nothing written


def test_curation_group_is_validated_against_the_task(finished_sweep, capsys):
    from orchestrator.config import validate_curation
    from orchestrator.curate import load_curation_config
    from store.layout import open_sweep

    sweep_dir, _ = finished_sweep
    cfg = load_curation_config(open_sweep(str(sweep_dir)), ["curation=small"])
    assert cfg.curation.name == "curation-small" and list(cfg.curation.strategies) == ["premem", "iid"]
    cfg.task.name = "gsm8k"
    from orchestrator.config import ConfigError

    with pytest.raises(ConfigError, match="task.name=gsm8k: give curation.candidates"):
        validate_curation(cfg)
    cfg.curation.similar = "generator"
    with pytest.raises(ConfigError, match="generator makes the built-in task's problems"):
        validate_curation(cfg)


def test_no_records_is_exit_2(finished_sweep, tmp_path, capsys):
    import shutil

    from orchestrator.curate import main

    sweep_dir, _ = finished_sweep
    empty = tmp_path / "sweeps" / sweep_dir.name
    shutil.copytree(sweep_dir, empty, ignore=shutil.ignore_patterns("records"))
    assert main([str(empty)]) == 2
    assert "no records; curation picks from a sweep's evaluated checkpoints" in capsys.readouterr().err


def test_expected_checkpoints_final_only():
    from omegaconf import OmegaConf

    from orchestrator.config import compose_config
    from orchestrator.sweep import expected_checkpoints
    from orchestrator.plan import expand_grid

    cfg = compose_config(["sweep=small", "task.n_train=64", "train.epochs=3", "train.checkpoints_per_epoch=0"])
    assert expected_checkpoints(expand_grid(cfg, "x")) == 2  # two trials, the final checkpoint each
    cfg.train.checkpoints_per_epoch = 2
    assert expected_checkpoints(expand_grid(cfg, "x")) == 2 * 3 * 2
    assert OmegaConf.select(cfg, "curation.name") == "curation"


def test_curation_result_reads_runs_into_curves_and_ratio():
    from orchestrator.curate import curation_result, describe, summary_lines
    from orchestrator.plan import TrialSpec

    results = _results()
    specs, accuracy = [], {}
    for i, row in enumerate(results.itertuples()):
        run_id = f"c-r1-{row.strategy}-s{row.seed}-n{row.examples_added}"
        specs.append(TrialSpec(run_id, i, {"curation.strategy": row.strategy, "seed": row.seed,
                                           "curation.examples_added": row.examples_added, "curation.round": 1}, {}))
        accuracy[run_id] = row.test_acc
    specs.append(TrialSpec("c-r1-iid-s9-n32", 99, {"curation.strategy": "iid", "seed": 9,
                                                   "curation.examples_added": 32, "curation.round": 1}, {}))
    curves, report = curation_result(specs, pd.Series(accuracy))  # the last run has no records: left out
    assert np.allclose(report["curves"]["premem"], [[0, 0.2, 0.02], [32, 0.3, 0.02], [64, 0.35, 0.02]])
    assert report["n_seeds"] == {"iid": 3, "premem": 3}
    assert report["efficiency_ratio"] == pytest.approx(1.5) and report["efficiency_ratio_std"] == pytest.approx(0)
    report.update(curation_id="c", source_sweep="s", trial="t", similar="generator", examples_added=[0, 32, 64, 128])
    note = describe("c", report, "get-artifact?path=x")
    assert "| premem | 0.200 ± 0.020 | 0.300 ± 0.020 | 0.350 ± 0.020 |  |" in note
    assert "efficiency ratio 1.50" in note and "![test accuracy vs examples added](get-artifact?path=x)" in note
    assert "efficiency vs i.i.d. (premem, +64): 1.50x" in "\n".join(summary_lines(report))


@pytest.mark.parametrize("source", ["generator", "neighbors", "command"])
def test_plan_round_obtains_nested_budgets_for_every_strategy_and_seed(finished_sweep, tmp_path, source):
    """Round 1 from the sweep's records: per (strategy, seed) the largest budget's new examples, nested budgets,
    new examples like the strategy's picks, nothing written yet."""
    from orchestrator.curate import Source, follow_up_config, load_curation_config, plan_round
    from orchestrator.plan import TrialSpec
    from store.layout import open_sweep
    from workers.tasks import task_args

    sweep_dir, store = finished_sweep
    paths = open_sweep(str(sweep_dir))
    overrides = ["curation.strategies=[premem,iid,high_ref_nll]", "curation.budgets=[2,4]", "curation.iid_budgets=[6]",
                 "curation.seeds=[0,1]", "curation.premem_at_most=null", "curation.select_fraction=0.25"]
    pool = tmp_path / "pool.jsonl"  # candidates in GSM8k's format: the built-in task's own problems
    pool.write_text("".join(json.dumps({"question": e.question, "answer": e.solution}) + "\n"
                            for e in make_examples(5, 40, "pool", 2, 3, 10)))
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    overrides += {"generator": [], "neighbors": [f"curation.candidates={pool}"],
                  "command": [f"curation.command='{sys.executable} {writer} {{selected}} {{out}} {{n}}'"]}[source]
    cfg = load_curation_config(paths, overrides)
    spec = TrialSpec.from_dict(json.loads((sweep_dir / "plan.json").read_text())[0])
    base = follow_up_config(cfg, spec, [])
    assert base.train.checkpoints_per_epoch == 0 and base.sweep.robustness_variant == ""
    splits = load_task(**task_args(base.task))
    before = sorted(store.rglob("*"))
    record_files = paths.record_files("original")
    sources = {(s, seed): Source(record_files) for s in cfg.curation.strategies for seed in cfg.curation.seeds}
    follow_ups = plan_round(base, 1, "c-r1", sources, splits.train, splits.test)
    assert sorted(store.rglob("*")) == before  # obtained, not written
    got = {(f.strategy, f.seed, f.examples_added) for f in follow_ups}
    assert got == {(s, seed, n) for seed in (0, 1) for s, ns in (("premem", (2, 4)), ("high_ref_nll", (2, 4)),
                                                                  ("iid", (2, 4, 6))) for n in ns}
    by_key = {(f.strategy, f.seed, f.examples_added): f for f in follow_ups}
    old = {e.question for e in splits.train + splits.test}
    for (strategy, seed, n), run in by_key.items():
        assert len(run.added) == n and run.added == by_key[(strategy, seed, max(ns for s, sd, ns in by_key
                                                                               if (s, sd) == (strategy, seed)))].added[:n]
        assert not old & {r["question"] for r in run.added}
        assert all((r["similar_to"] is None) == (strategy == "iid") for r in run.added)
    if source == "generator":  # premem's picks are its 25% lowest-premem train examples (4 of 16)
        from analysis.curate import example_scores
        from analysis.premem import prepare
        from store.records import load_records

        scores = example_scores(prepare(load_records(record_files)), 0.1).set_index("example_id")["premem_train_acc"]
        picked = {r["similar_to"] for r in by_key[("premem", 0, 4)].added}
        assert len(picked) == 4 and max(scores[list(picked)]) <= scores.quantile(0.25) + 1e-12


def test_every_strategy_picks_as_many_as_have_premem_at_most_the_paper_threshold(finished_sweep, tiny_model_dir):
    """The paper's rule: premem picks the train examples whose premem is at most 0.75; ifd and longest pick as
    many, each by its own score (IFD under the base model the follow-ups start from, the reference's length)."""
    from analysis.curate import example_scores, ifd
    from analysis.premem import prepare
    from orchestrator.curate import Source, follow_up_config, load_curation_config, plan_round, reference_ifd
    from orchestrator.plan import TrialSpec
    from store.layout import open_sweep
    from store.records import load_records
    from workers.backends.hf import HFBackend
    from workers.tasks import PromptFormat, task_args

    sweep_dir, _ = finished_sweep
    paths = open_sweep(str(sweep_dir))
    cfg = load_curation_config(paths, ["curation.strategies=[premem,ifd,longest]", "curation.budgets=[12]",
                                       "curation.iid_budgets=[]", "curation.seeds=[0]"])
    spec = TrialSpec.from_dict(json.loads((sweep_dir / "plan.json").read_text())[0])
    base = follow_up_config(cfg, spec, [])
    base.model.path = str(tiny_model_dir)  # the base model the follow-ups start from
    assert base.curation.premem_at_most == 0.75
    splits = load_task(**task_args(base.task))
    record_files = paths.record_files("original")
    scores = example_scores(prepare(load_records(record_files)), 0.1).set_index("example_id")["premem_train_acc"]
    base.curation.premem_at_most = threshold = float(scores.sort_values().iloc[len(scores) // 3])
    low = set(scores[scores <= threshold].index)
    assert 0 < len(low) <= 12 < len(scores)  # the rule picks some, not all; 12 new examples cover every pick
    sources = {(s, 0): Source(record_files) for s in cfg.curation.strategies}
    follow_ups = {f.strategy: f for f in plan_round(base, 1, "c-r1", sources, splits.train, splits.test)}
    picked = {s: {r["similar_to"] for r in f.added} for s, f in follow_ups.items()}
    assert picked["premem"] == low
    by_id = {e.example_id: e for e in splits.train}
    longest = sorted(by_id, key=lambda i: -len(by_id[i].solution))
    assert picked["longest"] == set(longest[:len(low)])
    difficulty = reference_ifd(base, splits.train)
    assert set(difficulty) == set(by_id) and all(v > 0 for v in difficulty.values())
    assert picked["ifd"] == set(sorted(difficulty, key=lambda i: -difficulty[i])[:len(low)])
    # IFD is the solution's perplexity given its question over its perplexity alone, under the base model
    backend = HFBackend()
    backend.load(str(tiny_model_dir))
    fmt, example = PromptFormat(base.task.question_suffix, base.task.stop), splits.train[0]
    given, alone = (backend.score([prompt], [fmt.target(example.solution)])[0]
                    for prompt in (fmt.prompt(example.question), ""))
    assert difficulty[example.example_id] == pytest.approx(float(ifd(given, alone)), rel=1e-6)


def test_scatter_colours_by_a_grid_value_and_leaves_runs_without_one_plain(tmp_path, monkeypatch):
    """A curation round's sweep colours its runs by `curation.strategy` (a grid value, not a config field):
    each run in the colour the colour bar shows at its value's label, different values in different colours; a
    run without a value is drawn in the plain colour instead of failing the plot. Numeric values likewise."""
    from matplotlib.collections import QuadMesh
    from matplotlib.colors import to_rgba

    from analysis import plots
    from analysis.fit import fit_line

    figures, save = [], plots._save

    def keep(fig, path):  # the figure as drawn, for its colours
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    points = pd.DataFrame({"run_id": ["a", "a", "b", "c"], "step": [1, 2, 1, 1],
                           "premem_train_acc": [0.1, 0.2, 0.3, 0.25], "test_acc": [0.1, 0.25, 0.3, 0.2]})
    fit = fit_line(points["premem_train_acc"], points["test_acc"])
    for color, labels in ((pd.Series({"a": "premem", "b": "iid", "c": None}), {"a": "premem", "b": "iid"}),
                          (pd.Series({"a": 0.25, "b": 1.0, "c": None}), {"a": "0.25", "b": "1"})):
        out = plots.scatter_premem_vs_test(points, fit, 0.1, tmp_path / "p.png", color, "curation.strategy")
        assert out.read_bytes()[:4] == b"\x89PNG"
        scatter, bar = figures[-1].axes
        drawn = {tuple(line.get_xdata()): to_rgba(line.get_color()) for line in scatter.lines}
        run_colour = {run: drawn[tuple(p.sort_values("step")["premem_train_acc"])]
                      for run, p in points.groupby("run_id")}
        scale = next(c for c in bar.collections if isinstance(c, QuadMesh))  # the colour bar's own colours
        at_label = {t.get_text(): to_rgba(scale.cmap(scale.norm(y))) for t, y in zip(bar.get_yticklabels(),
                                                                                     bar.get_yticks())}
        assert bar.get_ylabel() == "curation.strategy" and set(at_label) == set(labels.values())
        assert run_colour == {"a": at_label[labels["a"]], "b": at_label[labels["b"]], "c": to_rgba("tab:blue")}
        assert len(set(run_colour.values())) == 3, color.to_dict()


# ------------------------------------------------------------------------------ rerun is resume (issue 35)
def _follow_up(sweep_dir, overrides):
    from orchestrator.curate import follow_up_config, load_curation_config
    from orchestrator.sweep import stored_specs
    from store.layout import open_sweep

    paths = open_sweep(str(sweep_dir))
    cfg = load_curation_config(paths, overrides)
    return follow_up_config(cfg, stored_specs(paths)[0], overrides)


def test_a_curation_is_addressed_by_its_sweep_and_its_config(finished_sweep):
    """The same sweep and curation config give the same id whatever the runtime fields; anything that changes
    what the follow-up runs compute, or another source sweep, gives another; --new a dated one."""
    import re

    from orchestrator.curate import curation_id_for

    sweep_dir, _ = finished_sweep
    same = curation_id_for("small-1", _follow_up(sweep_dir, ["curation=small"]))
    assert re.fullmatch(r"curation-small-[0-9a-f]{8}", same)
    for runtime in (["tracking.uri=sqlite:////tmp/elsewhere.db"], ["cluster.num_cpus=7"],
                    ["curation.command_timeout_s=5"], ["sweep.max_concurrent_trials=3"], ["train.cpus_per_worker=3"]):
        assert curation_id_for("small-1", _follow_up(sweep_dir, ["curation=small", *runtime])) == same, runtime
    others = [curation_id_for("small-2", _follow_up(sweep_dir, ["curation=small"]))]
    for changed in (["curation.budgets=[4]"], ["curation.seeds=[1]"], ["curation.rounds=3"], ["train.lr=5e-3"],
                    ["sampler.k=3"], []):  # [] : curation=default
        others.append(curation_id_for("small-1", _follow_up(sweep_dir, ["curation=small", *changed]
                                                              if changed else [])))
    assert same not in others and len(set(others)) == len(others)
    assert re.fullmatch(r"curation-small-\d{8}-\d{6}",
                        curation_id_for("small-1", _follow_up(sweep_dir, ["curation=small"]), fresh=True))


def test_the_same_curate_command_finds_its_curation(finished_sweep, monkeypatch):
    """`curate SWEEP ...` twice: the second names the first's curation and continues it (round 1, once planned,
    is read from the store, not planned again); --new is another curation; each runs under the curation's
    lease, which it leaves behind it."""
    from pathlib import Path

    import orchestrator.curate as curate
    from store.layout import sweep_paths

    sweep_dir, store = finished_sweep
    calls = []

    def fake_run(paths, cfg, trial, base, splits, curation_id, follow_ups, overrides=(), resumed=False):
        where = store / "curations" / curation_id
        calls.append((curation_id, len(follow_ups), resumed, (where / "lease.json").is_file()))
        (where / curate.INVOCATION).write_text("{}")  # what run_curation writes first
        return 0

    monkeypatch.setattr(curate, "run_curation", fake_run)
    command = [str(sweep_dir), "curation=small", "curation.budgets=[4]", "curation.seeds=[0]"]
    assert curate.main(command) == 0
    first_id, planned, resumed, leased = calls[-1]
    assert planned == 2 and not resumed and leased  # premem and iid at +4
    # round 1 planned (plan.json is written last), as a driver that died leaves it
    plan = sweep_paths(str(store), f"{first_id}-r1").file("plan.json")
    Path(plan).parent.mkdir(parents=True)
    Path(plan).write_text("[]")
    assert curate.main([*command, "cluster.num_cpus=3"]) == 0
    assert calls[-1] == (first_id, 0, True, True)
    assert curate.main([*command, "--new"]) == 0
    assert calls[-1][0] != first_id and calls[-1][1:] == (2, False, True)
    assert not list(store.glob("curations/*/lease.json"))
