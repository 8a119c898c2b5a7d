"""The per-example records schema (the contract between the sampling pool and analysis), and loading it.

Records are read into integer-coded columns (dictionary codes for the string columns) so that a sweep of
tens of millions of rows fits in memory and every later step is a vectorized numpy pass.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store import io

RECORDS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("split", pa.string()),
        ("example_id", pa.string()),
        ("n_samples", pa.int64()),
        ("n_correct", pa.int64()),
        ("ref_nll", pa.float64()),
        ("variant", pa.string()),
    ]
)
STRING_COLUMNS = ("run_id", "split", "example_id", "variant")
INTEGER_COLUMNS = ("step", "n_samples", "n_correct")
FLOAT_COLUMNS = ("epoch", "ref_nll")


class RecordsError(ValueError):
    """Bad records input; the message names the file, the column and the first offending row."""


@dataclass
class Records:
    """All loaded records as aligned numpy columns; string columns are codes into the category arrays."""

    run: np.ndarray  # int32 codes into runs
    runs: np.ndarray  # object array of run_id strings, sorted
    step: np.ndarray  # int64
    epoch: np.ndarray  # float64
    is_train: np.ndarray  # bool
    example: np.ndarray  # int32 codes into examples
    examples: np.ndarray
    n_samples: np.ndarray  # int64
    n_correct: np.ndarray  # int64
    ref_nll: np.ndarray  # float64
    variant: np.ndarray  # int32 codes into variants
    variants: np.ndarray
    sources: list[str]  # file of each block of rows
    source_offsets: np.ndarray  # first global row of each source; row r is in source searchsorted(...)

    def __len__(self) -> int:
        return len(self.step)

    def locate(self, row: int) -> tuple[str, int]:
        """(file, row within that file) of a global row index, for error messages."""
        i = int(np.searchsorted(self.source_offsets, row, side="right") - 1)
        return self.sources[i], int(row - self.source_offsets[i])

    def variant_code(self, name: str) -> int:
        hits = np.flatnonzero(self.variants == name)
        return int(hits[0]) if len(hits) else -1


def find_record_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Expand files and directories (recursively; local paths or store URIs) into a sorted list of Parquet
    files."""
    files: list[str] = []
    for p in map(str, paths):
        if io.is_file(p):
            files.append(p)
        elif io.exists(p):
            found = io.list_files(p, suffix=".parquet")
            if not found:
                raise RecordsError(f"{p}: directory holds no .parquet records files")
            files.extend(found)
        else:
            raise RecordsError(f"{p}: no such records file or directory")
    return files


def _check_schema(path: Path, schema: pa.Schema) -> None:
    names = set(schema.names)
    for col in RECORDS_SCHEMA.names:
        if col not in names:
            raise RecordsError(f"{path}: missing column '{col}' (records need {', '.join(RECORDS_SCHEMA.names)})")
    for col in STRING_COLUMNS:
        t = schema.field(col).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise RecordsError(f"{path}: column '{col}' has type {schema.field(col).type}, expected string")
    for col in INTEGER_COLUMNS:
        t = schema.field(col).type
        if not pa.types.is_integer(t):
            raise RecordsError(f"{path}: column '{col}' has type {t}, expected integer")
    for col in FLOAT_COLUMNS:
        t = schema.field(col).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise RecordsError(f"{path}: column '{col}' has type {t}, expected float")


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _dictionary_column(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, categories) of a string column, read without materializing one Python str per row."""
    col = table.column(name)
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    col = col.unify_dictionaries() if hasattr(col, "unify_dictionaries") else col
    chunks = col.chunks
    if not chunks:
        return np.zeros(0, np.int32), np.array([], dtype=object)
    dictionary = chunks[0].dictionary
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int32)
    return codes, np.asarray(dictionary.to_pylist(), dtype=object)


def _validate_values(path: Path, cols: dict[str, np.ndarray], split_codes: np.ndarray, splits: np.ndarray) -> None:
    """Row-level checks on one file; raises naming the first offending row."""
    bad_split = ~np.isin(splits, ["train", "test"])
    if bad_split.any():
        row = _first(np.isin(split_codes, np.flatnonzero(bad_split)))
        raise RecordsError(f"{path}: column 'split' row {row}: {splits[split_codes[row]]!r} is not 'train' or 'test'")
    n_samples, n_correct = cols["n_samples"], cols["n_correct"]
    if (n_samples < 1).any():
        row = _first(n_samples < 1)
        raise RecordsError(f"{path}: column 'n_samples' row {row}: {n_samples[row]} is below 1")
    bad = (n_correct < 0) | (n_correct > n_samples)
    if bad.any():
        row = _first(bad)
        raise RecordsError(
            f"{path}: column 'n_correct' row {row}: {n_correct[row]} is outside [0, n_samples={n_samples[row]}]"
        )
    train_code = np.flatnonzero(splits == "train")
    is_train = split_codes == (train_code[0] if len(train_code) else -1)
    ref_nll = cols["ref_nll"]
    bad = is_train & ~(ref_nll >= 0)  # catches NaN and negatives
    if bad.any():
        row = _first(bad)
        raise RecordsError(f"{path}: column 'ref_nll' row {row}: {ref_nll[row]} on a train row (must be >= 0, not NaN)")
    if np.isnan(cols["epoch"]).any():
        row = _first(np.isnan(cols["epoch"]))
        raise RecordsError(f"{path}: column 'epoch' row {row}: NaN")


def _read_file(path: str) -> dict:
    fs_path, fs = io.parquet_source(path)
    try:
        schema = pq.read_schema(fs_path, filesystem=fs)
    except Exception as exc:  # pyarrow raises several types for non-Parquet input
        raise RecordsError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_schema(path, schema)
    table = pq.read_table(fs_path, columns=RECORDS_SCHEMA.names, filesystem=fs)
    for name in RECORDS_SCHEMA.names:
        nulls = table.column(name).null_count
        if nulls and not (name == "ref_nll"):
            mask = table.column(name).is_null().to_numpy(zero_copy_only=False)
            raise RecordsError(f"{path}: column '{name}' row {_first(mask)}: null value")
    cols: dict[str, np.ndarray] = {}
    for name in INTEGER_COLUMNS:
        cols[name] = table.column(name).to_numpy().astype(np.int64, copy=False)
    for name in FLOAT_COLUMNS:
        cols[name] = table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy()
    strings = {name: _dictionary_column(table, name) for name in STRING_COLUMNS}
    split_codes, splits = strings["split"]
    _validate_values(path, cols, split_codes, splits)
    return {"cols": cols, "strings": strings, "n": table.num_rows}


def _merge_codes(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Re-code per-file dictionary codes into one sorted category array."""
    all_values = np.concatenate([cats for _, cats in parts]) if parts else np.array([], dtype=object)
    categories, inverse = np.unique(all_values.astype(str), return_inverse=True)
    out, start = [], 0
    for codes, cats in parts:
        remap = inverse[start : start + len(cats)].astype(np.int32)
        out.append(remap[codes] if len(codes) else codes)
        start += len(cats)
    return (np.concatenate(out) if out else np.zeros(0, np.int32)), categories.astype(object)


def load_records(paths: Sequence[str | os.PathLike]) -> Records:
    """Read and validate records from Parquet files and/or directories of them."""
    files = find_record_files(paths)
    parts = [(f, _read_file(f)) for f in files]
    parts = [(f, p) for f, p in parts if p["n"]]
    if not parts:
        raise RecordsError(f"{', '.join(map(str, files))}: no records rows")
    coded = {name: _merge_codes([p["strings"][name] for _, p in parts]) for name in STRING_COLUMNS}
    cols = {name: np.concatenate([p["cols"][name] for _, p in parts]) for name in INTEGER_COLUMNS + FLOAT_COLUMNS}
    split_codes, splits = coded["split"]
    train_hits = np.flatnonzero(splits == "train")
    offsets = np.cumsum([0] + [p["n"] for _, p in parts])[:-1]
    records = Records(
        run=coded["run_id"][0],
        runs=coded["run_id"][1],
        step=cols["step"],
        epoch=cols["epoch"],
        is_train=split_codes == (train_hits[0] if len(train_hits) else -1),
        example=coded["example_id"][0],
        examples=coded["example_id"][1],
        n_samples=cols["n_samples"],
        n_correct=cols["n_correct"],
        ref_nll=cols["ref_nll"],
        variant=coded["variant"][0],
        variants=coded["variant"][1],
        sources=[str(f) for f, _ in parts],
        source_offsets=offsets.astype(np.int64),
    )
    _check_runs_have_test_rows(records)
    check_unique_keys(records)
    return records


def _check_runs_have_test_rows(records: Records) -> None:
    has_test = np.zeros(len(records.runs), bool)
    has_test[records.run[~records.is_train]] = True
    if not has_test.all():
        missing = int(np.flatnonzero(~has_test)[0])
        row = _first(records.run == missing)
        path, local = records.locate(row)
        raise RecordsError(
            f"{path}: column 'run_id' row {local}: run {records.runs[missing]!r} has no test rows "
            "(test accuracy is what the fit predicts)"
        )


def write_records(table: pa.Table | Iterable[dict], path: str | os.PathLike) -> str:
    """Write records as one whole object (local path or store URI) in the canonical schema."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pylist(list(table), schema=RECORDS_SCHEMA)
    return io.write_parquet(table.select(RECORDS_SCHEMA.names).cast(RECORDS_SCHEMA), str(path))


def check_unique_keys(records: Records) -> None:
    """Raise on a repeated (run_id, step, split, example_id, variant) key, naming the second occurrence."""
    if len(records) < 2:
        return
    step_off = records.step - records.step.min()
    radices = [len(records.runs), int(step_off.max()) + 1, 2, len(records.examples), len(records.variants)]
    if np.prod([float(r) for r in radices]) < 2**62:
        key = records.run.astype(np.int64)
        for col, radix in zip([step_off, records.is_train, records.example, records.variant], radices[1:]):
            key = key * radix + col
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        dup = np.flatnonzero(sorted_key[1:] == sorted_key[:-1])
        if not len(dup):
            return
        # Report the earliest row (in file order) that repeats a key seen before it.
        row = int(order[dup + 1].min())
    else:  # key space too large for one int64: let pandas hash the columns
        import pandas as pd

        frame = pd.DataFrame({"r": records.run, "s": records.step, "t": records.is_train,
                              "e": records.example, "v": records.variant})
        dupmask = frame.duplicated().to_numpy()
        if not dupmask.any():
            return
        row = _first(dupmask)
    path, local = records.locate(row)
    raise RecordsError(
        f"{path}: column 'example_id' row {local}: duplicate key (run_id={records.runs[records.run[row]]!r}, "
        f"step={records.step[row]}, split={'train' if records.is_train[row] else 'test'}, "
        f"example_id={records.examples[records.example[row]]!r}, variant={records.variants[records.variant[row]]!r})"
    )
