"""New training examples like given ones, for curation rounds: one new example per entry of `likes` (an
Example to resemble, or None for one drawn i.i.d.). Three sources, one per kind of task:

- `generator` (the built-in task): a fresh problem with the example's structure (workers.tasks.synthetic);
- `neighbors` (JSONL tasks): the nearest unused question of a candidate pool the user gives, by TF-IDF cosine
  similarity (scikit-learn); i.i.d. draws are random pool entries;
- `command` (any task): a user command that reads the examples to resemble and writes new ones as JSONL in the
  task's own format.

No new question repeats one of `exclude` (the task's train and test questions) or another new one.
"""
from __future__ import annotations

import json
import random
import shlex
import subprocess
import tempfile
from pathlib import Path

from workers.tasks.example import Example
from workers.tasks.jsonl import DatasetFileError, read_jsonl


class NewDataError(ValueError):
    """New examples could not be obtained; the message names the file, row or command."""


def from_pool(likes: list[Example | None], pool: list[Example], exclude: set[str], seed: int,
              prefix: str) -> list[Example]:
    """For each entry of `likes`, its nearest unused pool example (TF-IDF cosine on the question), or a random
    unused one for None; the pool's own solutions and answers are kept, the ids renamed under `prefix`."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.neighbors import NearestNeighbors

    usable = [e for e in dict((e.question, e) for e in pool).values() if e.question not in exclude]
    if len(usable) < len(likes):
        raise NewDataError(f"the candidate pool has {len(usable)} questions that are not already train or test "
                           f"questions; {len(likes)} are needed")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit([e.question for e in usable])
    index = NearestNeighbors(metric="cosine", algorithm="brute").fit(vectorizer.transform([e.question for e in usable]))
    wanted = [like for like in likes if like is not None]
    ranked: dict[str, list[int]] = {}
    if wanted:  # every candidate in order of similarity, per distinct example to resemble
        distinct = list(dict.fromkeys(like.question for like in wanted))
        per = min(len(usable), len(likes) + 1)  # enough to skip every candidate another example took
        _, neighbours = index.kneighbors(vectorizer.transform(distinct), n_neighbors=per)
        ranked = {q: list(row) for q, row in zip(distinct, neighbours)}
    rng = random.Random(f"{prefix}:{seed}")
    order = list(range(len(usable)))
    rng.shuffle(order)
    used: set[int] = set()
    out = []
    for like in likes:
        candidates = ranked[like.question] if like is not None else order
        pick = next(i for i in candidates if i not in used)
        used.add(pick)
        chosen = usable[pick]
        out.append(Example(f"{prefix}-{len(out)}", chosen.question, chosen.solution, chosen.answer))
    return out


def from_command(command: str, likes: list[Example | None], train: list[Example], task_format: str,
                 exclude: set[str], seed: int, prefix: str, timeout_s: float) -> list[Example]:
    """Run the user's command: `{selected}` is a JSONL file of the examples to resemble (one line per new
    example wanted; a random train example stands for each i.i.d. draw), `{out}` the JSONL file it writes in
    the task's format (GSM8k `question`/`answer`, MATH `problem`/`solution`), `{n}` the count, `{seed}` the
    seed. Rows repeating a train or test question, or each other, are dropped; too few is an error."""
    rng = random.Random(f"{prefix}:{seed}")
    rows = [like if like is not None else rng.choice(train) for like in likes]
    with tempfile.TemporaryDirectory(prefix="premem-curate-") as tmp:
        selected, out = Path(tmp) / "selected.jsonl", Path(tmp) / "new.jsonl"
        selected.write_text("".join(json.dumps({"example_id": e.example_id, "question": e.question,
                                                "solution": e.solution, "answer": e.answer}) + "\n" for e in rows))
        argv = [part.format(selected=selected, out=out, n=len(likes), seed=seed) for part in shlex.split(command)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NewDataError(f"curation.command {argv[0]!r}: {exc}") from None
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise NewDataError(f"curation.command {argv[0]!r} exited {done.returncode}: {tail}")
        try:
            written = read_jsonl(task_format, out, "new", 0)
        except DatasetFileError as exc:
            raise NewDataError(f"curation.command {argv[0]!r} wrote {exc}") from None
    seen, fresh = set(exclude), []
    for example in written:
        if example.question not in seen:
            seen.add(example.question)
            fresh.append(Example(f"{prefix}-{len(fresh)}", example.question, example.solution, example.answer))
    if len(fresh) < len(likes):
        raise NewDataError(f"curation.command {argv[0]!r} wrote {len(fresh)} new questions ({len(written)} rows, "
                           f"the rest repeat train, test or each other); {len(likes)} are needed")
    return fresh[: len(likes)]
