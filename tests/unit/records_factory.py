"""Seeded synthetic records in the canonical schema, for analysis tests and benchmarks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def make_records(n_runs: int, n_ckpts: int, n_examples: int, n_test: int | None = None, seed: int = 0,
                 n_samples: int = 5) -> pa.Table:
    """Runs whose accuracy rises and whose ref NLL falls over checkpoints, at run-specific speeds."""
    rng = np.random.default_rng(seed)
    n_test = n_examples if n_test is None else n_test
    tables = []
    for r in range(n_runs):
        speed = rng.uniform(0.2, 1.5)
        skill = rng.uniform(0.1, 0.6, size=n_examples + n_test)
        for c in range(n_ckpts):
            step = (c + 1) * 10
            p = np.clip(skill * (1 + 0.3 * c * speed / n_ckpts), 0, 1)
            n_correct = rng.binomial(n_samples, p)
            nll = rng.gamma(2.0, 0.3, size=n_examples) * np.exp(-speed * c)
            n = n_examples + n_test
            tables.append(pa.table({
                "run_id": pa.array([f"run{r:03d}"] * n).dictionary_encode(),
                "step": np.full(n, step, np.int64),
                "epoch": np.full(n, c + 1.0),
                "split": pa.array(["train"] * n_examples + ["test"] * n_test).dictionary_encode(),
                "example_id": pa.array([f"train-{i}" for i in range(n_examples)]
                                       + [f"test-{i}" for i in range(n_test)]).dictionary_encode(),
                "n_samples": np.full(n, n_samples, np.int64),
                "n_correct": n_correct.astype(np.int64),
                "ref_nll": np.concatenate([nll, np.full(n_test, np.nan)]),
                "variant": pa.array(["original"] * n).dictionary_encode(),
            }))
    return pa.concat_tables(tables)
