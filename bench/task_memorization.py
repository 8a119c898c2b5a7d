"""Go / no-go measurements for a built-in task: can premem at a per-token τ tell memorizing from solving on it?

Premem at τ works when S_seen*/T < τ < S_unseen/T: a seen reference's per-token NLL where memorizing starts to
raise its accuracy (τ_low) must lie below τ, and a never-seen reference's per-token NLL under the best model
(τ_high) above it.

    python -m bench.task_memorization e0 [--tasks choices skills]          # seconds: T and entropies per reference
    python -m bench.task_memorization e1 [--tasks choices skills] [--store runs] [--epochs 16] [--n-half 32]

- E0: per reference, its length T in tokens (the tiny model's tokenizer, built from the base corpus as the base
  stage builds it), the entropy of what the question leaves open (choice entropy H_c, wording entropy H_f, as the
  generator draws them) and the irreducible per-token NLL (H_c + H_f)/T of a reference no model has seen.
- E1: the cached base model finetuned on n_half seen train examples, scored every `--every` epochs on those and
  on n_half unseen ones: reference NLL per token, split into choice, forced and wording tokens (choices task) or
  digit and other tokens; the share below τ; k samples per question, graded. The gap: each seen example's
  accuracy at the last scored checkpoint where its reference is still above τ, minus the unseen accuracy there
  (target <= 0.05). τ_low: seen (example, checkpoint) pairs binned by their reference's NLL, the highest NLL
  below which having seen the example adds more than 0.1 accuracy (none: memorizing never paid); τ_high: the
  lowest 5th percentile of unseen NLL over checkpoints; the best finetuned unseen accuracy must reach 0.2.
- E2 (choices task, in E1): seen and unseen questions answered with a forced first choice other than the
  reference's ("Take X,"): if seen accuracy stays above unseen, the task has a shortcut past the choices.
- E3: E1 on `skills`, the control (expected: the gap above 0.05).
Go when τ_low <= τ/1.5 and τ_high >= 1.5 τ. Writes MEMORIZATION_OUT (default memorization.json).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch

MARGIN = 1.5
PAID = 0.1  # seen accuracy above unseen by more than this: memorizing pays
MIN_PAIRS = 16  # a bin of fewer seen (example, checkpoint) pairs says nothing about τ_low
LEARNED = 0.2  # the best unseen accuracy must reach this: a task the model cannot solve shows nothing


# ------------------------------------------------------------------------------------------------------ E0
def base_tokenizer(cfg):
    """The tokenizer the base stage builds for this config (the same corpus, the same trainer)."""
    from omegaconf import OmegaConf

    from workers.models import build_tokenizer
    from workers.tasks import PromptFormat, generator

    stage = OmegaConf.to_container(cfg.model.base_stage)
    task = {k: cfg.task[k] for k in ("min_steps", "max_steps", "max_number")}
    examples = generator(cfg.task.name).make_examples(stage.get("seed", 0), stage["n_examples"], "base", **task,
                                                      final_answer=stage.get("final_answer", False))
    fmt = PromptFormat(cfg.task.question_suffix, cfg.task.stop)
    return build_tokenizer([fmt.prompt(e.question) + fmt.target(e.solution) for e in examples], stage["vocab_size"])


def open_entropy(task: str, example) -> tuple[float, float]:
    """(choice, wording) entropy in nats of what the question leaves open in this example's reference."""
    if task == "choices":
        from workers.tasks import choices

        return choices.choice_entropy_nats(choices.parse_problem(example.question).chain), \
            choices.wording_entropy_nats()
    if task == "skills":
        from workers.tasks import skills

        return 0.0, skills.solution_entropy_nats(len(skills.parse_problem(example.question).steps))
    from workers.tasks import synthetic

    return 0.0, float(np.log(len(synthetic.traces(synthetic.parse_problem(example.question)))))


def e0(task: str, store: str, overrides: list[str]) -> dict:
    from orchestrator.config import compose_config
    from workers.tasks import PromptFormat, load_task, task_args

    cfg = compose_config([f"task={task}", f"store.root={store}", *overrides])
    tokenizer = base_tokenizer(cfg)
    fmt = PromptFormat(cfg.task.question_suffix, cfg.task.stop)
    train = load_task(**task_args(cfg.task)).train
    T = np.array([len(tokenizer(fmt.target(e.solution), add_special_tokens=False)["input_ids"]) for e in train])
    h = np.array([open_entropy(task, e) for e in train])
    floor = h.sum(1) / T
    out = {"task": task, "T_median": float(np.median(T)), "T_range": [int(T.min()), int(T.max())],
           "H_c_median": float(np.median(h[:, 0])), "H_f_median": float(np.median(h[:, 1])),
           "floor_median": float(np.median(floor)), "floor_p5": float(np.percentile(floor, 5)),
           "share_floor_at_least_0.15": float((floor >= 0.15).mean())}
    print(f"E0 {task:>9}: T median {out['T_median']:.0f} ({T.min()}-{T.max()}) tokens; H_c {out['H_c_median']:.2f}, "
          f"H_f {out['H_f_median']:.2f} nats; irreducible NLL/token median {out['floor_median']:.3f}, 5th pct "
          f"{out['floor_p5']:.3f}; share >= 0.15: {out['share_floor_at_least_0.15']:.2f}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------------ E1
def token_parts(task: str, tokenizer, target: str, solution: str) -> np.ndarray:
    """Per target token, its part: 0 forced (what the question and earlier tokens fix), 1 choice (the choices
    task's chosen numbers; on other tasks, digits), 2 wording."""
    offsets = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    parts = np.zeros(len(offsets), dtype=int)
    if task == "choices":
        from workers.tasks.choices import STEP_LINE

        shift = target.index(solution)
        lines = list(STEP_LINE.finditer(solution))
        n_chosen = len(lines) - 1  # every line but the fixed last step uses a choice
        chosen = [(shift + lines[0].start(1), shift + lines[0].end(1))] + \
            [(shift + m.start(3), shift + m.end(3)) for m in lines[:n_chosen]]
        opening = (shift, shift + lines[0].start(1))
        for i, (a, b) in enumerate(offsets):
            if any(a < hi and b > lo for lo, hi in chosen):
                parts[i] = 1
            elif a < opening[1] and b > opening[0] and target[a:b].strip():
                parts[i] = 2
        return parts
    for i, (a, b) in enumerate(offsets):
        parts[i] = 1 if any(ch.isdigit() for ch in target[a:b]) else 2
    return parts


@torch.inference_mode()
def token_nll(model, tokenizer, prompt: str, target: str) -> np.ndarray:
    from workers.tokens import IGNORE, encode_pair

    ids, labels = encode_pair(tokenizer, prompt, target, 10**9)
    logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    label = torch.tensor(labels[1:])
    scored = label != IGNORE
    return torch.nn.functional.cross_entropy(logits[scored], label[scored], reduction="none").numpy()


def forced_first_prefix(example, rng: random.Random) -> str | None:
    """The reference's first line forced to start from another valid start than the reference's ("17+"),
    (choices task)."""
    from workers.tasks import choices

    chain = choices.parse_problem(example.question).chain
    start, sign = choices.STEP_LINE.search(example.solution).group(1, 2)
    others = [x for x in range(chain.start[0], chain.start[1] + 1) if x != int(start)]
    return f"{rng.choice(others)}{sign}"


def accuracy(scorer, grader, fmt, examples, settings, prefixes=None) -> np.ndarray:
    """Per example, the share of its k samples graded correct (with a forced answer prefix when given)."""
    from dataclasses import replace

    if prefixes is None:
        prompts = [fmt.prompt(e.question) for e in examples]
    else:
        prompts = [replace(fmt, answer_prefix=p).prompt(e.question) for e, p in zip(examples, prefixes)]
    completions = scorer.sample(prompts, settings)
    out = []
    for e, cs, p in zip(examples, completions, prefixes or [None] * len(examples)):
        texts = [(p + c if p else c) for c in cs]
        out.append(np.mean([g.correct for g in grader.grade(texts, [e.answer] * len(texts))]))
    return np.array(out)


def e1(task: str, store: str, epochs: int, every: int, n_half: int, lr: float, batch_size: int, tau: float, k: int,
       overrides: list[str]) -> dict:
    from torch.utils.data import DataLoader

    from orchestrator.config import compose_config
    from orchestrator.sweep import ensure_base_model
    from workers.backends import SamplingSettings
    from workers.backends.hf import HFBackend
    from workers.grading import Grader
    from workers.models import load_model, load_tokenizer
    from workers.tasks import PromptFormat, load_task, task_args
    from workers.settings import linear_warmup_decay
    from workers.tokens import SupervisedData, collate

    cfg = compose_config([f"task={task}", f"store.root={store}", f"task.n_train={2 * n_half}", *overrides])
    base = ensure_base_model(cfg)
    splits = load_task(**task_args(cfg.task))
    seen, unseen = splits.train[:n_half], splits.train[n_half:]
    fmt = PromptFormat(cfg.task.question_suffix, cfg.task.stop)
    grader = Grader(splits.grader)
    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(base), load_model(base)
    loader = DataLoader(SupervisedData(seen, tokenizer, fmt, 512), batch_size=batch_size, shuffle=True,
                        collate_fn=lambda b: collate(b, tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    # the trials' schedule (train.warmup_frac 0.1, then linear decay): a constant lr from step 0 undoes the base
    # stage's arithmetic in the first epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(len(loader) * epochs, 0.1))
    scorer = HFBackend(threads=os.cpu_count() or 1)
    scorer.tokenizer = load_tokenizer(base, padding_side="left")
    settings = SamplingSettings(k=k, temperature=0.8, top_p=0.95, max_new_tokens=cfg.sampler.max_new_tokens,
                                stop=cfg.task.stop)
    parts = {name: [token_parts(task, tokenizer, fmt.target(e.solution), e.solution) for e in group]
             for name, group in (("seen", seen), ("unseen", unseen))}
    rng = random.Random(0)
    forced = {name: [forced_first_prefix(e, rng) for e in group] for name, group in
              (("seen", seen), ("unseen", unseen))} if task == "choices" else None
    rows, per_example = [], {"nll_seen": [], "nll_unseen": [], "acc_seen": [], "acc_unseen": []}
    for epoch in range(epochs + 1):
        if epoch:  # epoch 0: the base model itself
            model.train()
            for batch in loader:
                model(**batch).loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
        if epoch % every:
            continue
        model.eval()
        scorer.model = model
        row = {"epoch": epoch}
        for name, group in (("seen", seen), ("unseen", unseen)):
            nlls = [token_nll(model, tokenizer, fmt.prompt(e.question), fmt.target(e.solution)) for e in group]
            mean = np.array([n.mean() for n in nlls])
            per_example[f"nll_{name}"].append(mean)
            row[f"nll_{name}"] = float(np.median(mean))
            row[f"below_tau_{name}"] = float((mean < tau).mean())
            for part, label in ((0, "forced"), (1, "choice" if task == "choices" else "digits"), (2, "wording")):
                sums = [(n[p == part].sum(), (p == part).sum()) for n, p in zip(nlls, parts[name])]
                row[f"nll_{label}_{name}"] = float(sum(s for s, _ in sums) / max(sum(c for _, c in sums), 1))
            acc = accuracy(scorer, grader, fmt, group, settings)
            per_example[f"acc_{name}"].append(acc)
            row[f"acc_{name}"] = float(acc.mean())
            if forced is not None:
                row[f"acc_forced_{name}"] = float(accuracy(scorer, grader, fmt, group, settings, forced[name]).mean())
        rows.append(row)
        print(f"E1 {task:>9} epoch {epoch:2d}: " + ", ".join(
            f"{key} {value:.3f}" for key, value in row.items() if key != "epoch"), flush=True)
    return {"task": task, "base_model": base, "n_half": n_half, "lr": lr, "batch_size": batch_size, "tau": tau,
            "k": k, "checkpoints": rows, **verdict(per_example, rows, tau)}


NLL_BINS = (0.0, 0.033, 0.067, 0.1, 0.15, 0.2, 0.3, np.inf)


def excess_by_nll(nll_seen: np.ndarray, acc_seen: np.ndarray, acc_unseen: np.ndarray) -> list[dict]:
    """Seen (example, checkpoint) pairs after finetuning, binned by the reference's NLL: each bin's mean seen
    accuracy above the unseen accuracy of the same checkpoint (what having seen the example adds)."""
    nll, excess = nll_seen[1:].ravel(), (acc_seen[1:] - acc_unseen[1:, None]).ravel()
    rows = []
    for lo, hi in zip(NLL_BINS, NLL_BINS[1:]):
        inside = (nll >= lo) & (nll < hi)
        rows.append({"nll_from": lo, "nll_to": float(hi), "pairs": int(inside.sum()),
                     "excess_acc": float(excess[inside].mean()) if inside.any() else None})
    return rows


def verdict(per_example: dict[str, list[np.ndarray]], rows: list[dict], tau: float) -> dict:
    """The gap, τ_low, τ_high and go / no-go from E1's per-example NLL and accuracy at each scored checkpoint.
    τ_low: the upper edge of the highest-NLL bin (of at least MIN_PAIRS seen pairs) where having seen the example
    adds more than PAID accuracy: below it memorizing pays."""
    nll_seen, acc_seen = np.array(per_example["nll_seen"]), np.array(per_example["acc_seen"])
    acc_unseen = np.array(per_example["acc_unseen"]).mean(1)
    gaps = []
    for i in range(nll_seen.shape[1]):
        above = np.flatnonzero(nll_seen[:, i] >= tau)
        if len(above):
            c = above[-1]
            gaps.append(acc_seen[c, i] - acc_unseen[c])
    bins = excess_by_nll(nll_seen, acc_seen, acc_unseen)
    paying = [b for b in bins if b["pairs"] >= MIN_PAIRS and b["excess_acc"] > PAID]
    tau_low = max(b["nll_to"] for b in paying) if paying else None
    paid = [r for r in rows[1:] if r["acc_seen"] - r["acc_unseen"] > PAID]
    tau_high = float(min(np.percentile(n, 5) for n in per_example["nll_unseen"]))
    best_unseen = float(acc_unseen[1:].max())  # after finetuning: the base model alone shows nothing
    go = (tau_low is None or tau_low <= tau / MARGIN) and tau_high >= tau * MARGIN and best_unseen >= LEARNED
    out = {"gap": float(np.mean(gaps)) if gaps else None, "tau_low": tau_low,
           "tau_low_median_rule": paid[0]["nll_seen"] if paid else None, "tau_high": tau_high,
           "best_unseen_acc": best_unseen, "excess_by_nll": bins, "go": bool(go),
           "per_example": {k: np.array(v).round(4).tolist() for k, v in per_example.items()}}
    print("   seen accuracy above unseen, by reference NLL: " + ", ".join(
        f"[{b['nll_from']:g}, {b['nll_to']:g}) {b['excess_acc']:+.3f} ({b['pairs']})" for b in bins if b["pairs"]))
    print(f"   gap (seen above τ − unseen) {out['gap']:.3f}; τ_low {tau_low} (go needs <= {tau / MARGIN:.3f}; the "
          f"median rule gives {out['tau_low_median_rule']}); τ_high {tau_high:.3f} (go needs >= {tau * MARGIN:.3f}); "
          f"best unseen accuracy {best_unseen:.3f} (go needs >= {LEARNED}): {'GO' if go else 'NO-GO'}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["e0", "e1"])
    parser.add_argument("--tasks", nargs="+", default=["choices", "skills"])
    parser.add_argument("--store", default="runs", help="store root: the base models are built or reused there")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--every", type=int, default=2, help="score every this many epochs")
    parser.add_argument("--n-half", type=int, default=32, help="seen and unseen train examples")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=4, help="samples per question")
    parser.add_argument("-o", "--override", dest="overrides", action="append", default=[],
                        help="a config override, e.g. -o model.base_stage.seed=1235 (repeat for more)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    if args.experiment == "e0":
        results = [e0(task, args.store, args.overrides) for task in args.tasks]
    else:
        results = [e1(task, args.store, args.epochs, args.every, args.n_half, args.lr, args.batch_size, args.tau,
                      args.k, args.overrides) for task in args.tasks]
    out = os.environ.get("MEMORIZATION_OUT", "memorization.json")
    with open(out, "w") as f:
        json.dump({"experiment": args.experiment, "results": results, "seconds": time.time() - started,
                   "argv": vars(args)}, f, indent=1)
    print(f"-> {out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
