"""Evaluation budget: premem R² when each checkpoint is evaluated on a seeded subset of train questions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.__main__ import main as analysis_main
from analysis.fit import draw_subsets, fit_line, fit_report, r2_rows, subset_premem, subset_r2, train_example_codes
from analysis.premem import checkpoint_table, prepare
from store.records import load_records
from tests.unit.records_factory import make_records

KANG_TAUS = {"gsm8k": 0.100259, "math": 0.182684}


@pytest.fixture(scope="module")
def kang_states(kang_dir):
    return {task: prepare(load_records([kang_dir / f"kang_{task}_records.parquet"])) for task in KANG_TAUS}


def synthetic_frame() -> pd.DataFrame:
    """Three runs on 30 train questions, except run000, which trained on train-0..14 only (a fraction run)."""
    frame = make_records(3, 4, 30, n_test=10, seed=7).to_pandas().astype(
        {"run_id": str, "split": str, "example_id": str, "variant": str})
    fraction = (frame.run_id == "run000") & frame.example_id.isin([f"train-{i}" for i in range(15, 30)])
    return frame[~fraction].reset_index(drop=True)


def write(frame: pd.DataFrame, path) -> str:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return str(path)


def test_all_row_is_fits_r2(kang_states):
    for task, tau in KANG_TAUS.items():
        state = kang_states[task]
        _, fits = fit_report(state, tau)
        n_train = len(train_example_codes(state))
        table = subset_r2(state, tau, [None, n_train, 10**6], draws=20, seed=0)
        assert (table.n == n_train).all() and (table.draws == 1).all()
        for col in ("r2_median", "r2_lo", "r2_hi"):
            np.testing.assert_allclose(table[col], fits["premem_train_acc"].r2, rtol=0, atol=1e-12)
    assert n_train == 7500  # MATH's train set, all of it


def test_intervals_narrow_and_median_approaches_full_as_n_grows(kang_states):
    for task, tau in KANG_TAUS.items():
        table = subset_r2(kang_states[task], tau, [250, 2000, None], draws=20, seed=0).set_index("n")
        width = table.r2_hi - table.r2_lo
        full = table.r2_median.iloc[-1]
        assert width.loc[250] > 2 * width.loc[2000] > 0, task
        assert abs(table.r2_median.loc[2000] - full) < abs(table.r2_median.loc[250] - full), task
        assert (table.r2_lo <= table.r2_median).all() and (table.r2_median <= table.r2_hi).all()


def test_seeded_deterministic_and_independent_of_other_sizes(kang_states):
    state, tau = kang_states["gsm8k"], KANG_TAUS["gsm8k"]
    first = subset_r2(state, tau, [250, 500], draws=20, seed=3)
    pd.testing.assert_frame_equal(first, subset_r2(state, tau, [250, 500], draws=20, seed=3))
    # A size's subsets come from (seed, n): asking for other sizes too does not change them.
    pd.testing.assert_frame_equal(first.iloc[[1]].reset_index(drop=True),
                                  subset_r2(state, tau, [500], draws=20, seed=3))
    other = subset_r2(state, tau, [250, 500], draws=20, seed=4)
    assert not np.allclose(first.r2_median, other.r2_median)


def test_draw_subsets_are_n_distinct_train_examples_uniformly(tmp_path):
    state = prepare(load_records([write(synthetic_frame(), tmp_path / "r.parquet")]))
    train = train_example_codes(state)
    assert sorted(state.records.examples[train]) == sorted(f"train-{i}" for i in range(30))
    subsets = draw_subsets(state, 12, 50, seed=1)
    assert subsets.shape == (50, 12)
    assert all(len(set(row)) == 12 for row in subsets.tolist())
    assert np.isin(subsets, train).all()
    assert len({tuple(sorted(row)) for row in subsets.tolist()}) > 45
    np.testing.assert_array_equal(subsets, draw_subsets(state, 12, 50, seed=1))
    # Uniform: each of the 30 train questions is in a subset of 10 with probability 1/3 (sd 0.009 here).
    frequency = np.bincount(draw_subsets(state, 10, 3000, seed=2).ravel(), minlength=len(state.records.examples))
    np.testing.assert_allclose(frequency[train] / 3000, 1 / 3, atol=0.04)
    for bad in (0, 31):
        with pytest.raises(ValueError, match="subset size"):
            draw_subsets(state, bad, 5)


def test_subset_premem_is_premem_of_the_subsets_records_for_every_run(tmp_path):
    frame = synthetic_frame()
    tau = 0.15
    state = prepare(load_records([write(frame, tmp_path / "all.parquet")]))
    codes = {name: code for code, name in enumerate(state.records.examples)}
    beyond_run000 = np.array([[codes[f"train-{i}"] for i in range(20, 26)]])
    subsets = np.vstack([draw_subsets(state, 6, 8, seed=5), beyond_run000])
    got = subset_premem(state, tau, subsets)
    assert got.shape == (9, 12)
    for d, subset in enumerate(subsets):
        ids = set(state.records.examples[subset])
        kept = frame[(frame.split == "test") | frame.example_id.isin(ids)]
        want = checkpoint_table(prepare(load_records([write(kept, tmp_path / f"s{d}.parquet")])), tau)
        assert len(want) == 12  # every run and checkpoint, test rows untouched
        # run000 trained on train-0..14 only: its checkpoints use the subset's questions it has (NaN if none).
        np.testing.assert_allclose(got[d], want.premem_train_acc.to_numpy(), rtol=0, atol=1e-12)
    assert np.isnan(got[-1, :4]).all() and np.isfinite(got[-1, 4:]).all()  # run000 has none of train-20..25


def test_r2_rows_is_fit_lines_r2_over_finite_points():
    rng = np.random.default_rng(0)
    x = rng.random((6, 40))
    y = 0.7 * x[0] + rng.normal(0, 0.1, 40)
    x[1, [3, 9, 20]] = np.nan
    x[2] = 0.5  # flat: fit_line's slope 0, R² 0
    got = r2_rows(x, y)
    for row, r2 in zip(x, got):
        keep = np.isfinite(row)
        assert r2 == pytest.approx(fit_line(row[keep], y[keep]).r2, abs=1e-12)
    assert got[2] == 0.0 and 0.5 < got[0] < 1


def test_cli_subset(tmp_path, kang_dir, capsys):
    out = tmp_path / "subset.json"
    code = analysis_main(["subset", "--records", str(kang_dir / "kang_gsm8k_records.parquet"), "--nll-threshold",
                          "0.100259", "--sizes", "250", "all", "--draws", "20", "--bootstrap", "100",
                          "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert [(row["n"], row["draws"]) for row in result["table"]] == [(250, 20), (7473, 1)]
    assert result["table"][-1]["r2_median"] == pytest.approx(result["full_r2"], abs=1e-12)
    assert result["full_r2"] == pytest.approx(0.939, abs=1e-3) and result["n_points"] == 51
    lo, hi = result["full_r2_ci95_runs"]
    assert lo < result["full_r2"] < hi
    assert "all (7473)" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [(["--sizes", "0"], "--sizes: '0'"), (["--sizes", "x"], "--sizes: 'x'"),
                                          (["--draws", "0"], "--draws: 0"),
                                          (["--nll-threshold", "0"], "--nll-threshold: 0.0")])
def test_cli_subset_bad_input_exit_2_one_line(tmp_path, capsys, args, message):
    path = write(synthetic_frame(), tmp_path / "r.parquet")
    out = tmp_path / "out" / "subset.json"
    code = analysis_main(["subset", "--records", path, "--nll-threshold", "0.1", "--json", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
