"""What the store keeps (`store.keep`), and the bytes it received and keeps, measured.

`all` keeps every checkpoint's HF weights (re-evaluating stored checkpoints is a use case: the CPU demo's
default) and the newest `train.keep_engine_states` engine states of each trial. `final` keeps each trial's last
checkpoint's weights, and `final_and_best` also its checkpoint of best test accuracy so far: every other
checkpoint's weights are deleted as soon as its records and completions are written (its evaluation result is
the signal; a failed evaluation keeps them, for a retry). Either also deletes a trial's engine state once the
trial has finished, when nothing can resume it any more. The weights of the last checkpoint stay for the
robustness pass and `reeval`.

Ray Train's `CheckpointConfig(num_to_keep=...)` deletes whole checkpoints as soon as newer ones are reported, before
the pool has evaluated them and with the engine state a restart needs, so the policy is written here; Ray's
registry of reported checkpoints keeps its entries, the directories just hold less.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from store import io
from store.layout import SweepPaths
from store.names import ENGINE_DIR

POLICIES = ("all", "final", "final_and_best")
EVICTED = "EVICTED.json"  # left in a checkpoint whose weights were deleted: when, why, how many bytes
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")
KINDS = ("weights", "engine", "records")


def kind_of(relative_path: str) -> str:
    """weights | engine | records (also completions) | other, for a file under a sweep's checkpoints or records."""
    if relative_path.split("/", 1)[0] == ENGINE_DIR or f"/{ENGINE_DIR}/" in f"/{relative_path}":
        return "engine"
    if relative_path.endswith(WEIGHT_SUFFIXES):
        return "weights"
    if relative_path.endswith(".parquet"):
        return "records"
    return "other"


def by_kind(sizes: dict[str, int]) -> dict[str, int]:
    totals = dict.fromkeys((*KINDS, "other"), 0)
    for relative, size in sizes.items():
        totals[kind_of(relative)] += size
    return totals


def evict_weights(checkpoint: str, reason: str) -> int:
    """Delete a checkpoint's HF weights (its config, tokenizer and trainer state stay, with an EVICTED note);
    the bytes deleted."""
    sizes = io.file_sizes(checkpoint)
    weights = {rel: size for rel, size in sizes.items() if kind_of(rel) == "weights"}
    for relative in weights:
        io.delete_file(io.join(checkpoint, relative))
    io.write_text(io.join(checkpoint, EVICTED), json.dumps({"reason": reason, "bytes": sum(weights.values())}))
    return sum(weights.values())


def evicted(checkpoint: str) -> bool:
    return io.is_file(io.join(checkpoint, EVICTED))


@dataclass
class Retention:
    """The driver's side of `store.keep`: told of every evaluated checkpoint and finished trial, it deletes
    what the policy does not keep. `final_steps`: each trial's last step (orchestrator.cost.trial_steps)."""

    policy: str
    paths: SweepPaths
    final_steps: dict[str, int]
    best: dict[str, tuple[float, int]] = field(default_factory=dict)  # run_id -> (test accuracy, step)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def checkpoint(self, run_id: str, step: int) -> str:
        return io.join(self.paths.checkpoints, run_id, f"step_{step:06d}")

    def evaluated(self, run_id: str, step: int, test_acc: float) -> None:
        """A checkpoint's records are written: delete its weights unless the policy keeps them (and, under
        final_and_best, the previous best's once this one beats it)."""
        if self.policy == "all":
            return
        final = self.final_steps.get(run_id)
        drop = [step]
        if self.policy == "final_and_best":
            with self.lock:
                best = self.best.get(run_id)
                if best is None or test_acc > best[0]:
                    self.best[run_id] = (test_acc, step)
                    drop = [best[1]] if best is not None else []
        for old in drop:
            if old != final:
                evict_weights(self.checkpoint(run_id, old), f"store.keep={self.policy}")

    def trial_finished(self, run_id: str) -> None:
        """No restart can need the trial's engine state any more."""
        if self.policy == "all":
            return
        for checkpoint in self.paths.trial_checkpoints(run_id):
            io.delete_dir(io.join(checkpoint, ENGINE_DIR))


def record_written(paths: SweepPaths, run_id: str, step: int, checkpoint: str) -> None:
    """Measure a checkpoint as it was persisted (before anything is evicted): the store's write ledger."""
    totals = by_kind(io.file_sizes(checkpoint))
    io.write_text(paths.file("analysis", "bytes", run_id, f"step_{step:06d}.json"), json.dumps(totals))


def store_bytes(paths: SweepPaths) -> dict[str, int]:
    """Bytes written to and kept in the sweep's store, by kind: written from the ledger of persisted checkpoints
    plus the records and completions (never deleted); kept from what is there now."""
    written = dict.fromkeys(KINDS, 0)
    for ledger in io.list_files(io.join(paths.analysis, "bytes"), suffix=".json"):
        for kind, size in json.loads(io.read_text(ledger)).items():
            if kind in written:
                written[kind] += size
    kept = {k: v for k, v in by_kind(io.file_sizes(paths.checkpoints)).items() if k in KINDS}
    results = sum(by_kind(io.file_sizes(location))["records"] for location in (paths.records, paths.completions))
    written["records"] += results
    kept["records"] += results
    return {**{f"store_written_{k}_bytes": v for k, v in written.items()},
            **{f"store_kept_{k}_bytes": v for k, v in kept.items()}}


def human_bytes(n: float) -> str:
    """1234 -> '1.2 KB' (decimal units, as disks and object stores count)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def bytes_text(measured: dict[str, int]) -> str:
    parts = [f"{k} {human_bytes(measured[f'store_written_{k}_bytes'])} written / "
             f"{human_bytes(measured[f'store_kept_{k}_bytes'])} kept" for k in KINDS]
    return "store: " + "; ".join(parts)
