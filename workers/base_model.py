"""The tiny base model every trial of a built-in task starts from: built once per key, pretrained on the task
family, saved as an HF directory (the driver caches it in the store under `base_model_key`'s hash).

A short training loop of its own (one process, no DeepSpeed), run by the driver in a child process so that one
seed gives the same weights bit for bit on any thread count: `build_base_model_reproducibly`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

from workers.settings import BaseStage, linear_warmup_decay

# MKL's strict conditional numerical reproducibility: its matrix products give the same bits whatever the thread
# count, on any x86 CPU with AVX2. Without it a base model pretrained on 2 threads differs from one pretrained on
# 1 (the sweep uses cluster.num_cpus threads). MKL reads the setting once, as it starts: it goes in the
# environment of a fresh process.
REPRODUCIBLE_MKL = {"MKL_CBWR": "AVX2,STRICT"}
KEY_VERSION = 2  # part of every cached base model's key: bumped when the build changes what a key gives
DIFFICULTY = ("min_steps", "max_steps", "max_number")
BUILD_FILE = "base_stage.json"  # beside the weights: the stage, the task family, the steps, the packages' versions


def base_model_key(model, task) -> dict:
    """What the model every trial starts from depends on, from the `model` and `task` config groups (DictConfigs
    or their dataclasses): `{"path": model.path}` for a given HF model; else the tiny model's base stage, the task
    family's difficulty (its name too, but for synthetic, whose key predates the other tasks) and the prompt
    format, `build_base_model`'s arguments. Equal keys give the same weights; the dict's hash names the cached
    model's directory (store.layout.base_model_dir)."""
    if model.path:
        return {"path": model.path}
    stage = BaseStage(**{f.name: getattr(model.base_stage, f.name) for f in fields(BaseStage)})
    family = {k: getattr(task, k) for k in DIFFICULTY}
    if task.name != "synthetic":
        family["name"] = task.name
    prompt = {"question_suffix": task.question_suffix, "stop": task.stop}
    return {"stage": asdict(stage), "task": family, "prompt": prompt, "v": KEY_VERSION}


def build_base_model_reproducibly(out_dir: str | Path, stage: BaseStage, task: dict, prompt: dict, threads: int = 2,
                                  log=print) -> Path:
    """`build_base_model` in a child process under REPRODUCIBLE_MKL: one seed gives the same weights bit for bit
    on any thread count, so a fresh store rebuilds a cached base model exactly (and this process's torch
    threads stay as they were). Its progress lines go to `log`."""
    spec = {"out_dir": str(out_dir), "stage": asdict(stage), "task": task, "prompt": prompt, "threads": threads}
    # The build runs on CPU; saving the model imports DeepSpeed, which would print a warning that it found no GPU.
    env = {**os.environ, **REPRODUCIBLE_MKL, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    child = subprocess.Popen([sys.executable, "-u", "-m", "workers.base_model", json.dumps(spec)],
                             stdout=subprocess.PIPE, text=True, env=env)
    for line in child.stdout:
        log(line.rstrip("\n"))
    if child.wait() != 0:
        raise RuntimeError(f"building the base model in {out_dir} failed (exit code {child.returncode}; "
                           "its error is printed above)")
    return Path(out_dir)


def build_base_model(out_dir: str | Path, stage: BaseStage, task: dict, prompt: dict, threads: int = 2,
                     log=print) -> Path:
    """Build tokenizer and tiny model, pretrain on a base split of the task, save as an HF directory. Its
    weights depend on the thread count unless MKL runs in strict mode: `build_base_model_reproducibly`."""
    import torch
    from torch.utils.data import DataLoader

    from workers.models import build_tiny_model, build_tokenizer, package_versions, save_pretrained_atomic
    from workers.tasks import PromptFormat, generator
    from workers.tokens import SupervisedData, collate

    torch.set_num_threads(threads)
    difficulty = {k: task[k] for k in DIFFICULTY if k in task}
    make_examples = generator(task.get("name", "synthetic")).make_examples
    examples = make_examples(stage.seed, stage.n_examples, "base", **difficulty, final_answer=stage.final_answer)
    fmt = PromptFormat(**prompt)
    corpus = [fmt.prompt(e.question) + fmt.target(e.solution) for e in examples]
    tokenizer = build_tokenizer(corpus, stage.vocab_size)
    model = build_tiny_model(tokenizer, stage.hidden_size, stage.num_layers, stage.num_heads,
                             stage.max_positions, stage.seed)
    data = SupervisedData(examples, tokenizer, fmt, stage.max_positions)
    generator = torch.Generator().manual_seed(stage.seed)
    loader = DataLoader(data, batch_size=stage.batch_size, shuffle=True, generator=generator,
                        collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
    total = len(loader) * stage.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(total, 0.05))
    model.train()
    step, started = 0, time.perf_counter()
    for _ in range(stage.epochs):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % 50 == 0 or step == total:
                log(f"base model: step {step}/{total} loss {loss.item():.3f} "
                    f"({time.perf_counter() - started:.0f}s)")
    model.eval()
    path = save_pretrained_atomic(model, tokenizer, out_dir)
    (path / BUILD_FILE).write_text(json.dumps({"stage": asdict(stage), "task": difficulty, "steps": total,
                                               "packages": package_versions()}))
    return path


if __name__ == "__main__":  # the child process of build_base_model_reproducibly
    _spec = json.loads(sys.argv[1])
    build_base_model(_spec["out_dir"], BaseStage(**_spec["stage"]), _spec["task"], _spec["prompt"], _spec["threads"])
