"""Optional packages that libraries import on their own in our worker processes, where nothing uses them.

premem installs mlflow and scikit-learn for the driver (tracking; curation's similarity search), and two
libraries of the workers import them at import time when they are installed:
- deepspeed's autotuner imports mlflow (`deepspeed/autotuning/autotuner.py`, reached from `import deepspeed`);
  a train worker does no autotuning;
- transformers' generation imports scikit-learn's `roc_curve` (`transformers/generation/candidate_generator.py`,
  reached from any model class) for assisted decoding; neither a train worker nor a sampler decodes that way.
In a train worker they were 2.7 s of its imports (mlflow 1.4 s, scikit-learn with scipy.stats 1.3 s; 2026-12-03,
a `ray start` head under PYTHONPROFILEIMPORTTIME), paid by every trial's worker and every sampler.

A `None` entry in `sys.modules` is Python's own mark of an absent module: `import` raises ImportError and
`importlib.util.find_spec` returns None, which both libraries read as "not installed". A train loop or backend of
your own that imports either in the worker: set PREMEM_KEEP_OPTIONAL_IMPORTS=1 where the driver runs (the sweep's
Ray job passes it to every worker, orchestrator/schedule.py's job_env).
"""
from __future__ import annotations

import os
import sys

UNUSED_IN_WORKERS = ("mlflow", "sklearn")
KEEP_ENV = "PREMEM_KEEP_OPTIONAL_IMPORTS"


def skip_unused_optional_imports() -> None:
    """Mark the UNUSED_IN_WORKERS packages absent in this process, unless something already imported them.

    Call first thing in a process that only trains or samples (a Ray Train worker, a sampler actor): the
    driver and the analysis need both packages."""
    if os.environ.get(KEEP_ENV, "0") == "1":
        return
    for name in UNUSED_IN_WORKERS:
        sys.modules.setdefault(name, None)
