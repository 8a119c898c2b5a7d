"""A (prompt, solution) pair as tokens and labels: one definition for the train loss (workers/train.py,
workers/base_model.py) and the reference solution's NLL (the sampling backends), so the two can never disagree
about which tokens count."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from workers.tasks import Example, PromptFormat

IGNORE = -100  # label of a position that no loss or NLL counts (the prompt, the padding)


def encode_pair(tokenizer, prompt: str, target: str, max_len: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with the prompt masked; prompt and target tokenized apart so the mask is exact."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = (prompt_ids + target_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + target_ids)[:max_len]
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class SupervisedData(Dataset):
    """Tokenized (prompt, target) pairs; labels are IGNORE on prompt tokens so loss is on the solution only."""

    def __init__(self, examples: list[Example], tokenizer, fmt: PromptFormat, max_len: int):
        self.items = [encode_pair(tokenizer, fmt.prompt(e.question), fmt.target(e.solution), max_len)
                      for e in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.items[i]
