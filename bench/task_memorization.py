"""Is memorization visible on a built-in task? The tiny base model is finetuned on one half of the train split
(A) and, after each epoch, scores the reference solutions of A (seen) and of the other half (B: the same task,
never seen) with the pool's scorer (mean per-token NLL, workers/backends/hf.py), and samples B's questions.

Premem counts an example as memorized when its reference NLL is below τ (0.1 by default). That only means
"reproduces the reference verbatim" if a model that solves a problem without having seen its reference scores
that reference well above τ: B's NLL at the epochs where B's accuracy is high. Prints a table per task and
writes MEMORIZATION_OUT (default memorization.json).

It also shows what premem needs on top: that a seen question's accuracy rises above an unseen one's only once its
reference is memorized. Each epoch also samples A's questions (seen accuracy; the gap to B's is what memorizing
adds), splits each reference's NLL into its digit tokens (on the built-in tasks: the numbers, which the question
determines) and the rest (the wording, which it does not), and audits A's correct samples: the share that start
with their reference's first 60 characters (verbatim) and the share whose written arithmetic ("a + b = c") has a
wrong line (an answer the written steps do not give).
    python -m bench.task_memorization [--tasks synthetic skills] [--epochs 8] [--n-half 256] [--store runs]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import time

import numpy as np
import torch

ARITHMETIC_LINE = re.compile(r"(\d+) ([-+x/]) (\d+) = (\d+)")


def arithmetic_is_wrong(completion: str) -> bool:
    """Whether any written "a op b = c" line of a completion is false."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b,
           "/": lambda a, b: a / b if b else None}
    return any(ops[op](int(a), int(b)) != int(c) for a, op, b, c in ARITHMETIC_LINE.findall(completion))


@torch.inference_mode()
def split_nll(model, tokenizer, prompts: list[str], targets: list[str]) -> tuple[float, float, float]:
    """(mean per-example NLL, NLL per digit token, NLL per other token) of the targets, tokenized as the scorer does."""
    from workers.tokens import IGNORE, encode_pair

    per_example, digit_sum, digit_n, word_sum, word_n = [], 0.0, 0, 0.0, 0
    for prompt, target in zip(prompts, targets):
        ids, labels = encode_pair(tokenizer, prompt, target, 10**9)
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        label = torch.tensor(labels[1:])
        scored = label != IGNORE
        nll = torch.nn.functional.cross_entropy(logits[scored], label[scored], reduction="none").numpy()
        digit = np.array([any(ch.isdigit() for ch in tokenizer.decode([t])) for t in label[scored].tolist()])
        per_example.append(nll.mean())
        digit_sum, digit_n = digit_sum + nll[digit].sum(), digit_n + int(digit.sum())
        word_sum, word_n = word_sum + nll[~digit].sum(), word_n + int((~digit).sum())
    return float(np.mean(per_example)), digit_sum / max(digit_n, 1), word_sum / max(word_n, 1)


def finetune_and_score(task: str, store: str, epochs: int, n_half: int, lr: float, tau: float, k: int,
                       n_sampled: int, base_overrides: list[str]) -> dict:
    from torch.utils.data import DataLoader

    from orchestrator.config import compose_config
    from orchestrator.sweep import ensure_base_model
    from workers.backends import SamplingSettings
    from workers.backends.hf import HFBackend
    from workers.grading import grade_gsm8k
    from workers.models import load_model, load_tokenizer
    from workers.tasks import PromptFormat, load_task, task_args
    from workers.tokens import collate
    from workers.train import SupervisedData

    cfg = compose_config([f"task={task}", f"store.root={store}", f"task.n_train={2 * n_half}", *base_overrides])
    base = ensure_base_model(cfg)
    splits = load_task(**task_args(cfg.task))
    seen, unseen = splits.train[:n_half], splits.train[n_half:]
    fmt = PromptFormat(cfg.task.question_suffix, cfg.task.stop)
    torch.manual_seed(0)
    tokenizer, model = load_tokenizer(base), load_model(base)
    loader = DataLoader(SupervisedData(seen, tokenizer, fmt, 512), batch_size=16, shuffle=True,
                        collate_fn=lambda b: collate(b, tokenizer.pad_token_id),
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scorer = HFBackend(threads=os.cpu_count() or 1)
    scorer.tokenizer = load_tokenizer(base, padding_side="left")
    settings = SamplingSettings(k=k, temperature=0.8, top_p=0.95, max_new_tokens=160, stop=cfg.task.stop)
    rows = []
    for epoch in range(epochs + 1):
        if epoch:  # epoch 0: the base model itself
            model.train()
            losses = []
            for batch in loader:
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
        model.eval()
        scorer.model = model
        nll = {name: scorer.score([fmt.prompt(e.question) for e in part], [fmt.target(e.solution) for e in part])
               for name, part in (("seen", seen), ("unseen", unseen))}
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)) if epoch else None,
               "nll_seen": float(nll["seen"].mean()), "nll_unseen": float(nll["unseen"].mean()),
               "below_tau_seen": float((nll["seen"] < tau).mean()),
               "below_tau_unseen": float((nll["unseen"] < tau).mean())}
        for name, part in (("seen", seen[:n_sampled]), ("unseen", unseen[:n_sampled])):
            _, row[f"nll_digits_{name}"], row[f"nll_words_{name}"] = split_nll(
                model, scorer.tokenizer, [fmt.prompt(e.question) for e in part], [fmt.target(e.solution) for e in part])
            completions = scorer.sample([fmt.prompt(e.question) for e in part], settings)
            correct = [(e, c) for e, cs in zip(part, completions) for c in cs if grade_gsm8k(c, e.answer).correct]
            row[f"acc_{name}"] = len(correct) / sum(len(cs) for cs in completions)
            if name == "seen":
                row["correct_seen_verbatim"] = float(np.mean([c.strip().startswith(e.solution.strip()[:60])
                                                              for e, c in correct])) if correct else None
                row["correct_seen_wrong_arithmetic"] = float(np.mean([arithmetic_is_wrong(c) for _, c in correct])) \
                    if correct else None
        rows.append(row)
        share = lambda key: "n/a" if row[key] is None else f"{row[key]:.2f}"  # noqa: E731
        print(f"  {task:>9} epoch {epoch:2d}: NLL seen {row['nll_seen']:.3f} (digits {row['nll_digits_seen']:.3f}, "
              f"words {row['nll_words_seen']:.3f}) unseen {row['nll_unseen']:.3f} (digits "
              f"{row['nll_digits_unseen']:.3f}, words {row['nll_words_unseen']:.3f}); below τ={tau:g}: seen "
              f"{row['below_tau_seen']:.2f} unseen {row['below_tau_unseen']:.2f}; accuracy seen {row['acc_seen']:.3f} "
              f"unseen {row['acc_unseen']:.3f}; correct seen samples: verbatim {share('correct_seen_verbatim')}, "
              f"wrong arithmetic {share('correct_seen_wrong_arithmetic')}", flush=True)
    return {"task": task, "base_model": base, "n_half": n_half, "lr": lr, "tau": tau, "epochs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["synthetic", "skills"])
    parser.add_argument("--store", default="runs", help="store root: the base models are built or reused there")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-half", type=int, default=256, help="train examples in each half")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=4, help="samples per sampled question")
    parser.add_argument("--sampled", type=int, default=64, help="seen and unseen questions sampled per epoch")
    parser.add_argument("overrides", nargs="*", help="config overrides for the base model, e.g. "
                                                    "model.base_stage.n_examples=600")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.time()
    results = [finetune_and_score(task, args.store, args.epochs, args.n_half, args.lr, args.tau, args.k,
                                  args.sampled, args.overrides) for task in args.tasks]
    out = os.environ.get("MEMORIZATION_OUT", "memorization.json")
    with open(out, "w") as f:
        json.dump({"results": results, "seconds": time.time() - started, "argv": vars(args)}, f, indent=1)
    print(f"-> {out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
