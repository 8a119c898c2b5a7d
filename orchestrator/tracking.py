"""MLflow: a parent run per sweep, a nested child run per trial, per-step metrics, artifacts.

The only module that writes to MLflow. Metric names are the records' vocabulary.
"""
from __future__ import annotations

import collections
import logging
import math
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from store import io
from store.names import ORIGINAL
from analysis.sources import RUN_ID_TAG
from orchestrator.config import redact

SWEEP_TAG = "premem.sweep"
CURATION_TAG = "premem.curation"
# Unix time, refreshed by a living driver on its sweep's (and curation's) run; see Heartbeat, end_abandoned
HEARTBEAT_TAG = "premem.heartbeat"
ABANDONED_TAG = "premem.abandoned"
CHECKPOINT_METRICS = ("train_acc", "test_acc", "ref_nll_mean", "train_unparsed_frac", "test_unparsed_frac",
                      "train_grade_timeouts", "test_grade_timeouts",
                      "probe_nll_max_abs_diff", "weight_check_rebuilds")  # the weight-swap check (workers/probe.py)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI (markdown)
PARENT_METRICS = ("premem_r2_identity", "premem_r2", "premem_slope", "premem_intercept", "premem_n_points",
                  "premem_n_missing", "nll_threshold", "train_acc_r2_identity", "train_acc_r2", "train_nll_r2",
                  *(f"store_{when}_{kind}_bytes" for when in ("written", "kept") for kind in ("weights", "engine", "records")))


# mlflow announces at INFO that it creates (or migrates) a SQLite store's tables: two lines in the terminal on a
# store's first sweep, nothing to act on
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message names the (redacted) URI and the cause."""


def short_cause(exc: Exception) -> str:
    """Why a request to the tracking server failed, in a few words (credentials redacted)."""
    text = str(exc)
    if "refused" in text or "Max retries exceeded" in text:
        return "nothing answers there (connection refused or timed out)"
    return redact((text.strip().splitlines() or [type(exc).__name__])[0][:300])


def check_tracking(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast (one request, no retries) if the tracking store cannot be reached or refuses the request."""
    if not uri.startswith(("http://", "https://")):
        if uri.startswith("sqlite:///"):  # a folder that does not exist yet is made with the store
            folder = Path(uri.removeprefix("sqlite:///")).parent
            if folder.exists() and not (folder.is_dir() and os.access(folder, os.W_OK)):
                raise TrackingError(f"tracking.uri={uri}: {folder} is not a writable directory")
        return
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(int(timeout_s)))
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingError(f"tracking.uri={redact(uri)}: the MLflow server cannot be used: {short_cause(exc)}") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Tracker:
    """Writes a sweep to MLflow. Every metric value is written once per (run, key, step): a step already
    logged (in this process, or found by `load_logged` after a restart) is not written again."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        self.uri = uri
        self.client = MlflowClient(uri)
        self.logged: dict[tuple[str, str], set[int]] = {}  # (MLflow run id, metric key) -> steps written
        self.unsure: set[str] = set()  # runs where a write failed midway: reread what they have before writing
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            # Artifacts go to the store (a file: URI or the object store's); a server decides its own location.
            location = None
            if artifact_root and not uri.startswith("http"):
                location = artifact_root if io.is_uri(artifact_root) else Path(artifact_root).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        if exp is None or EXPERIMENT_KIND[0] not in exp.tags:
            # MLflow 3's UI opens an experiment of unknown kind on its (empty) GenAI traces page: ours is runs
            self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)

    # ------------------------------------------------------------------------------------- where
    def ui_urls(self, parent_id: str) -> tuple[str, str]:
        """(the parent run's page, the experiment's runs table) in the MLflow UI; for a SQLite store, on the
        `mlflow ui` that the summary's command starts."""
        base = redact(self.uri).rstrip("/") if self.uri.startswith("http") else "http://127.0.0.1:5000"
        runs = f"{base}/#/experiments/{self.experiment_id}/runs"
        mode = "?workflowType=machine_learning"  # else the UI keeps the last mode it showed, GenAI by default
        return f"{runs}/{parent_id}{mode}", f"{runs}{mode}"

    def log_datasets(self, mlflow_run_id: str, datasets: dict[str, tuple[str, object, object]]) -> None:
        """The task's splits as the run's dataset inputs: {context: (name, DataFrame, source)}; a source is
        the dataset file's path or URI, or a dict naming how the data were generated."""
        import mlflow.data
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for context, (name, frame, source) in datasets.items():
            origin = CodeDatasetSource({k: str(v) for k, v in source.items()}) if isinstance(source, dict) else source
            dataset = mlflow.data.from_pandas(frame, source=origin, name=name, targets="answer")
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
        self.client.log_inputs(mlflow_run_id, datasets=inputs)

    # ------------------------------------------------------------------------------------- runs
    def start_sweep(self, sweep_id: str, name: str, config_yaml: str, plan_json: str,
                    parent_id: str | None = None) -> str:
        """A sweep's run; nested under `parent_id` when the sweep is a round of a curation."""
        from workers.models import package_versions

        tags = {SWEEP_TAG: sweep_id, "sweep_name": name, "git_commit": git_commit(), HEARTBEAT_TAG: _now(),
                **{f"package.{k}": v for k, v in package_versions().items()},  # the driver's environment
                **({"mlflow.parentRunId": parent_id} if parent_id else {})}
        run = self.client.create_run(self.experiment_id, run_name=sweep_id, tags=tags)
        self.log_artifacts(run.info.run_id, [config_yaml, plan_json])
        return run.info.run_id

    def start_curation(self, curation_id: str, source_sweep: str, config_yaml: str) -> str:
        """A curation's parent run: its rounds' sweep runs nest under it, their trials under those."""
        run = self.client.create_run(self.experiment_id, run_name=curation_id,
                                     tags={CURATION_TAG: curation_id, "premem.source_sweep": source_sweep,
                                           "git_commit": git_commit(), HEARTBEAT_TAG: _now()})
        self.log_artifacts(run.info.run_id, [config_yaml])
        return run.info.run_id

    def start_trial(self, parent_id: str, run_id: str, label: str, params: dict[str, object]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=label,
            tags={"mlflow.parentRunId": parent_id, RUN_ID_TAG: run_id})
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def _log_params(self, mlflow_run_id: str, params: dict[str, object]) -> None:
        self.client.log_batch(mlflow_run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])

    def continue_sweep(self, sweep_id: str, name: str, config_yaml: str, plan_json: str,
                       trials: dict[str, tuple[str, dict[str, object]]],
                       parent_id: str | None = None) -> tuple[str, dict[str, str]]:
        """A planned sweep's runs for a driver that goes on with it: (parent run id, {records run_id: child run
        id}) for every trial in `trials` ({run_id: (label, params)}). Runs a dead driver made are kept; runs it
        had not made are made now; and since MLflow makes a run and logs its params or artifacts in separate
        calls, what a driver killed between two calls left out (a trial's params, the sweep's config and plan)
        is logged now. Trials of the stored sweep that `trials` leaves out are left as they are."""
        parent = self._sweep_parent(sweep_id)
        if parent is None:  # the driver died before it made the sweep's runs
            parent, found = self.start_sweep(sweep_id, name, config_yaml, plan_json, parent_id), {}
        else:
            if not self.client.list_artifacts(parent):
                self.log_artifacts(parent, [config_yaml, plan_json])
            found = {c.data.tags[RUN_ID_TAG]: c for c in self._children(parent) if RUN_ID_TAG in c.data.tags}
        children = {}
        for run_id, (label, params) in trials.items():
            if run_id not in found:
                children[run_id] = self.start_trial(parent, run_id, label, params)
                continue
            child = found[run_id]
            missing = {k: v for k, v in params.items() if k not in child.data.params}
            if missing:
                self._log_params(child.info.run_id, missing)
            children[run_id] = child.info.run_id
        return parent, children

    def _sweep_parent(self, sweep_id: str) -> str | None:
        parents = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_id}'")
        return parents[0].info.run_id if parents else None

    def _children(self, parent: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                       max_results=10000)

    def find_sweep(self, sweep_id: str) -> tuple[str, dict[str, str]]:
        """(parent run id, {records run_id: child run id}) of an earlier sweep, for re-evaluation."""
        parent = self._sweep_parent(sweep_id)
        if parent is None:
            raise LookupError(f"no MLflow run tagged {SWEEP_TAG}={sweep_id} in {self.uri}")
        children = self._children(parent)
        return parent, {c.data.tags[RUN_ID_TAG]: c.info.run_id for c in children if RUN_ID_TAG in c.data.tags}

    def find_curation(self, curation_id: str) -> str:
        """The parent run of an earlier curation (LookupError when the driver died before making it)."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{CURATION_TAG}` = '{curation_id}'")
        if not runs:
            raise LookupError(f"no MLflow run tagged {CURATION_TAG}={curation_id} in {self.uri}")
        return runs[0].info.run_id

    def end_run(self, mlflow_run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(mlflow_run_id, status=status)

    def reopen(self, mlflow_run_id: str) -> None:
        """Mark a run RUNNING again (a resumed sweep continues its runs instead of making new ones)."""
        self.client.update_run(mlflow_run_id, status="RUNNING")
        if self.client.get_run(mlflow_run_id).data.tags.get(HEARTBEAT_TAG):
            self.client.set_tag(mlflow_run_id, HEARTBEAT_TAG, _now())

    def end_abandoned(self, stale_after_s: float) -> list[str]:
        """End as KILLED every RUNNING run whose driver stopped beating more than `stale_after_s` ago (it died
        without ending them: SIGKILL, a lost machine), with the runs nested under it; their names.

        Ctrl-C and crashes end a sweep's runs themselves; only a driver that could not leaves them RUNNING, and
        the next premem command on the experiment ends them. `orchestrator.resume` reopens them."""
        cutoff = time.time() - stale_after_s
        running = self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                          max_results=10000)
        by_parent: dict[str, list] = {}
        for run in running:
            by_parent.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
        ended = []
        for run in running:
            beat = run.data.tags.get(HEARTBEAT_TAG)
            if not beat or float(beat) >= cutoff:
                continue
            note = (f"its driver stopped beating at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(float(beat)))}"
                    " and never ended it; `python -m orchestrator.resume SWEEP_DIR` continues a sweep")
            todo = [run]
            while todo:
                current = todo.pop()
                self.client.set_tag(current.info.run_id, ABANDONED_TAG, note)
                self.client.set_terminated(current.info.run_id, status="KILLED")
                todo += by_parent.get(current.info.run_id, [])
            ended.append(run.info.run_name)
        return ended

    def load_logged(self, mlflow_run_id: str, keys: tuple[str, ...]) -> None:
        """Remember which steps of `keys` the run already has, so that a resumed sweep writes each once."""
        for key in keys:
            history = self.client.get_metric_history(mlflow_run_id, key)
            self.logged.setdefault((mlflow_run_id, key), set()).update(m.step for m in history)

    def has_step(self, mlflow_run_id: str, key: str, step: int) -> bool:
        return step in self.logged.get((mlflow_run_id, key), ())

    def _new_only(self, mlflow_run_id: str, metrics: list[Metric]) -> list[Metric]:
        fresh, seen = [], set()
        for m in metrics:
            if not self.has_step(mlflow_run_id, m.key, m.step) and (m.key, m.step) not in seen:
                fresh.append(m)
                seen.add((m.key, m.step))
        return fresh

    def _write_metrics(self, mlflow_run_id: str, metrics: list[Metric]) -> None:
        if mlflow_run_id in self.unsure:  # an earlier batch may have reached the server before the error
            self.load_logged(mlflow_run_id, tuple({m.key for m in metrics}))
        metrics = self._new_only(mlflow_run_id, metrics)
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(mlflow_run_id, metrics=metrics[start:start + 1000])
        for m in metrics:
            self.logged.setdefault((mlflow_run_id, m.key), set()).add(m.step)
        self.unsure.discard(mlflow_run_id)

    # ---------------------------------------------------------------------------------- metrics
    def log_metrics(self, mlflow_run_id: str, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        # NaN is a real outcome (e.g. R² when every point has the same premem); infinities are not logged.
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items()
                   if v is not None and not math.isinf(v)]
        self._write_metrics(mlflow_run_id, metrics)

    def log_series(self, mlflow_run_id: str, key: str, points: list) -> None:
        """Values of one metric at many steps ([step, value] pairs, e.g. a trial's train losses); each step is
        written once however often it is logged (a resumed sweep logs what its checkpoints hold again)."""
        now = int(time.time() * 1000)
        self._write_metrics(mlflow_run_id, [Metric(key, float(value), now, int(step)) for step, value in points
                                            if value is not None and math.isfinite(value)])

    def log_checkpoint(self, mlflow_run_id: str, step: int, metrics: dict, artifacts: list[str],
                       variant: str = "original") -> None:
        """One evaluated checkpoint: its files, then its accuracy metrics.

        In that order: the accuracy metrics come last, so a checkpoint whose `test_acc` is in MLflow has all
        of it there (what a resumed sweep checks)."""
        for location in artifacts:  # <sweep>/records/<run_id>/x.parquet -> artifact records/x.parquet
            self.log_artifacts(mlflow_run_id, [location], io.name(io.parent(io.parent(location))))
        suffix = variant_suffix(variant)
        self.log_metrics(mlflow_run_id, {f"{k}{suffix}": metrics[k] for k in CHECKPOINT_METRICS if k in metrics},
                         step)

    def log_artifacts(self, mlflow_run_id: str, locations: list, artifact_path: str | None = None) -> None:
        """Files from local paths or store URIs (the latter copied through a temp dir under their own name)."""
        for location in map(str, locations):
            if not io.is_uri(location):
                self.client.log_artifact(mlflow_run_id, location, artifact_path=artifact_path)
                continue
            with tempfile.TemporaryDirectory(prefix="premem-artifact-") as tmp:
                local = Path(tmp) / io.name(location)
                local.write_bytes(io.read_bytes(location))
                self.client.log_artifact(mlflow_run_id, str(local), artifact_path=artifact_path)

    def set_tags(self, mlflow_run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(mlflow_run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def variant_suffix(variant: str) -> str:
    """What a records set's metric names end with: nothing for `original`, `_<set>` for the others (one value
    per step and name: two sets never share a metric)."""
    return "" if variant == ORIGINAL else f"_{variant}"


def _now() -> str:
    return f"{time.time():.0f}"


class Heartbeat:
    """Refreshes HEARTBEAT_TAG on runs every `every_s` through the Outbox, while the driver lives: the runs of a
    driver that stopped beating are ended by the next one (Tracker.end_abandoned)."""

    def __init__(self, outbox: "Outbox", run_ids: list[str], every_s: float = 60.0):
        self.stopped = threading.Event()

        def beat() -> None:
            while not self.stopped.wait(every_s):
                for run_id in run_ids:
                    outbox.set_tags(run_id, {HEARTBEAT_TAG: _now()})

        threading.Thread(target=beat, name="premem-mlflow-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()


def end_abandoned_runs(tracker: Tracker, stale_after_s: float) -> None:
    """Tracker.end_abandoned, said in one line when it ended something."""
    ended = tracker.end_abandoned(stale_after_s)
    if ended:
        print(f"MLflow: ended {len(ended)} run(s) left RUNNING by a driver that died (no heartbeat for "
              f"{stale_after_s:g}s), as KILLED: {', '.join(ended[:5])}{' ...' if len(ended) > 5 else ''}", flush=True)


class Outbox:
    """The Tracker's writes, made in order on a thread of their own: a tracking server that is down or
    restarting delays them and never stops training or loses a value. The write methods take the Tracker's
    arguments and return at once; `close` waits for the server to take everything."""

    def __init__(self, tracker: Tracker, retry_max_s: float = 10.0, log=None):
        self.tracker = tracker
        self.retry_max_s = retry_max_s
        self.log = log or (lambda line: print(line, flush=True))
        self.pending: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.down_since: float | None = None
        self.thread = threading.Thread(target=self._run, name="premem-mlflow-outbox", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------- writes (Tracker's, queued)
    def log_checkpoint(self, mlflow_run_id: str, step: int, metrics: dict, artifacts: list[str],
                       variant: str = ORIGINAL) -> None:
        self._enqueue(Tracker.log_checkpoint, mlflow_run_id, step, metrics, artifacts, variant=variant)

    def log_series(self, mlflow_run_id: str, key: str, points: list) -> None:
        self._enqueue(Tracker.log_series, mlflow_run_id, key, points)

    def log_metrics(self, mlflow_run_id: str, values: dict[str, float], step: int) -> None:
        self._enqueue(Tracker.log_metrics, mlflow_run_id, values, step)

    def log_artifacts(self, mlflow_run_id: str, locations: list, artifact_path: str | None = None) -> None:
        self._enqueue(Tracker.log_artifacts, mlflow_run_id, locations, artifact_path)

    def set_tags(self, mlflow_run_id: str, tags: dict[str, str]) -> None:
        self._enqueue(Tracker.set_tags, mlflow_run_id, tags)

    def end_run(self, mlflow_run_id: str, status: str = "FINISHED") -> None:
        self._enqueue(Tracker.end_run, mlflow_run_id, status)

    def _enqueue(self, write, *args, **kwargs) -> None:
        with self.cond:
            self.pending.append((write, args, kwargs))
            self.cond.notify_all()

    def _run(self) -> None:
        backoff = 1.0
        while True:
            with self.cond:
                while not self.pending:
                    self.cond.wait()
                write, args, kwargs = self.pending[0]
            try:
                write(self.tracker, *args, **kwargs)
            except Exception as exc:
                self.tracker.unsure.add(args[0])  # every write names its run first
                if self.down_since is None:
                    self.down_since = time.time()
                    cause = short_cause(exc)
                    self.log(f"MLflow: cannot write to {redact(self.tracker.uri)} ({cause}); training goes on, "
                             f"{len(self.pending)} write(s) kept and retried")
                time.sleep(backoff)
                backoff = min(self.retry_max_s, backoff * 2)
                continue
            if self.down_since is not None:
                self.log(f"MLflow: {redact(self.tracker.uri)} is back after {time.time() - self.down_since:.0f}s; "
                         "writing what was kept")
                self.down_since, backoff = None, 1.0
            with self.cond:
                self.pending.popleft()
                self.cond.notify_all()

    def close(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for every write to be made; returns how many were not."""
        deadline = time.time() + timeout_s
        with self.cond:
            while self.pending and time.time() < deadline:
                self.cond.wait(timeout=min(1.0, max(0.0, deadline - time.time())))
            return len(self.pending)


def quiet_client_retries() -> None:
    """MLflow's client retries a request for minutes on its own; the Outbox retries instead, without bound."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
