"""Batching encoded examples: ``ParaDataCollator`` right-pads ``input_ids`` / ``labels`` / ``para_prompt_mask``
and adds the ``attention_mask`` (HF Trainer and plain ``DataLoader`` compatible)."""

from __future__ import annotations

from typing import Any

import torch

from .formats import EXAMPLE_KEYS, IGNORE_INDEX


class ParaDataCollator:
    """Right-pad examples into a batch for the HF Trainer or a plain DataLoader.

    Returns ``input_ids`` (padded with the tokenizer's pad id, else its eos id), ``attention_mask``
    (1 on tokens, 0 on padding), ``labels`` (-100 on padding) and ``para_prompt_mask`` (bool, False on
    padding). Extra keys in the features are ignored. ``pad_to_multiple_of`` rounds the padded length up.
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None):
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        if pad is None:
            raise ValueError("the tokenizer has neither a pad_token nor an eos_token to pad with")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
        self.tokenizer = tokenizer
        self.pad_token_id = int(pad)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        rows = []
        for j, f in enumerate(features):
            missing = [k for k in EXAMPLE_KEYS if k not in f]
            if missing:
                raise KeyError(f"feature {j} is missing {', '.join(missing)} (expected {', '.join(EXAMPLE_KEYS)})")
            ids = _as_list(f["input_ids"])
            labels = _as_list(f["labels"])
            mask = [bool(x) for x in _as_list(f["para_prompt_mask"])]
            if not (len(ids) == len(labels) == len(mask)):
                raise ValueError(
                    f"feature {j}: input_ids, labels and para_prompt_mask differ in length "
                    f"({len(ids)}, {len(labels)}, {len(mask)})"
                )
            rows.append((ids, labels, mask))
        length = max(len(r[0]) for r in rows)
        m = self.pad_to_multiple_of
        if m:
            length = ((length + m - 1) // m) * m
        b = len(rows)
        input_ids = torch.full((b, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((b, length), dtype=torch.long)
        labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
        prompt_mask = torch.zeros((b, length), dtype=torch.bool)
        for i, (ids, lab, pm) in enumerate(rows):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.tensor(lab, dtype=torch.long)
            prompt_mask[i, :n] = torch.tensor(pm, dtype=torch.bool)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "para_prompt_mask": prompt_mask,
        }


def _as_list(x: Any) -> list:
    if hasattr(x, "tolist"):
        return x.tolist()
    return list(x)
