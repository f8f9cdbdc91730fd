"""The running batch: rows, their KV cache (left-padded, transformers' DynamicCache), attention mask,
positions, and the per-row adapter tensors the layers apply at every decode step.

Rows join after their prefill (``merge``) and leave when done (``keep``); both reshape every per-row tensor
along the batch dimension once, so a decode step itself only runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .request import Request


@dataclass
class RowTensors:
    """Per-row adapter tensors, one entry per hooked module.

    scales: per decoder layer, {module path in the layer: delta (B, 1, features)} or None (no scaled rows);
        a row is scaled by 1 + delta (``para.scaling.apply_delta``).
    lora: {full module path: (A (B, r, in), B (B, out, r), scaling (B, 1, 1))}.
    """

    scales: list[dict[str, torch.Tensor] | None]
    lora: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @staticmethod
    def empty(n_layers: int) -> "RowTensors":
        return RowTensors([None] * n_layers, {})


@dataclass
class Batch:
    rows: list[Request]
    cache: DynamicCache
    mask: torch.Tensor  # (B, L) 1 on real tokens, 0 on left padding
    positions: torch.Tensor  # (B,) position id of the next token
    next_tokens: torch.Tensor  # (B,) token fed at the next decode step
    tensors: RowTensors

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return self.mask.shape[1]


def _pad_left(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]
    return F.pad(t, pad)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotImplementedError(
                f"the engine serves full-attention caches only; this model uses {type(layer).__name__}"
            )
    return cache.layers


def merge(batch: Batch | None, new: Batch) -> Batch:
    """Append ``new``'s rows to ``batch`` (left-padding both KV caches to a common length)."""
    if batch is None or len(batch) == 0:
        return new
    length = max(batch.length, new.length)
    for old_layer, new_layer in zip(_layers(batch.cache), _layers(new.cache)):
        old_layer.keys = torch.cat([_pad_left(old_layer.keys, length, 2), _pad_left(new_layer.keys, length, 2)])
        old_layer.values = torch.cat([_pad_left(old_layer.values, length, 2),
                                      _pad_left(new_layer.values, length, 2)])
    scales = []
    for old, fresh in zip(batch.tensors.scales, new.tensors.scales):
        scales.append(_merge_scales(old, fresh, len(batch), len(new)))
    lora = {}
    for path in set(batch.tensors.lora) | set(new.tensors.lora):
        lora[path] = _merge_lora(batch.tensors.lora.get(path), new.tensors.lora.get(path), len(batch), len(new))
    return Batch(
        rows=batch.rows + new.rows,
        cache=batch.cache,
        mask=torch.cat([_pad_left(batch.mask, length, 1), _pad_left(new.mask, length, 1)]),
        positions=torch.cat([batch.positions, new.positions]),
        next_tokens=torch.cat([batch.next_tokens, new.next_tokens]),
        tensors=RowTensors(scales, lora),
    )


def _merge_scales(old, fresh, n_old: int, n_new: int):
    if old is None and fresh is None:
        return None
    old, fresh = old or {}, fresh or {}
    merged = {}
    for path in set(old) | set(fresh):
        ref = old.get(path, fresh.get(path))
        a = old.get(path, torch.zeros(n_old, *ref.shape[1:], dtype=ref.dtype, device=ref.device))  # delta 0
        b = fresh.get(path, torch.zeros(n_new, *ref.shape[1:], dtype=ref.dtype, device=ref.device))
        merged[path] = torch.cat([a, b])
    return merged


def _merge_lora(old, fresh, n_old: int, n_new: int):
    ref = old if old is not None else fresh
    r = max(t[0].shape[1] for t in (old, fresh) if t is not None)

    def padded(t, n):
        if t is None:  # rows without LoRA on this module: zero matrices contribute exactly nothing
            a, b, s = ref
            return (a.new_zeros(n, r, a.shape[2]), b.new_zeros(n, b.shape[1], r), s.new_zeros(n, 1, 1))
        a, b, s = t
        return F.pad(a, [0, 0, 0, r - a.shape[1]]), F.pad(b, [0, r - b.shape[2]]), s

    (a1, b1, s1), (a2, b2, s2) = padded(old, n_old), padded(fresh, n_new)
    return torch.cat([a1, a2]), torch.cat([b1, b2]), torch.cat([s1, s2])


def keep(batch: Batch, rows: list[int]) -> Batch:
    """The batch restricted to ``rows`` (finished rows leave), with all-padding leading columns trimmed."""
    index = torch.tensor(rows, dtype=torch.long, device=batch.mask.device)
    mask = batch.mask[index]
    start = int((mask.sum(0) > 0).nonzero()[0]) if len(rows) else batch.length
    for layer in _layers(batch.cache):
        layer.keys = layer.keys[index, :, start:]
        layer.values = layer.values[index, :, start:]
    scales = [None if s is None else {p: t[index] for p, t in s.items()} for s in batch.tensors.scales]
    lora = {p: (a[index], b[index], s[index]) for p, (a, b, s) in batch.tensors.lora.items()}
    return Batch(
        rows=[batch.rows[i] for i in rows],
        cache=batch.cache,
        mask=mask[:, start:],
        positions=batch.positions[index],
        next_tokens=batch.next_tokens[index],
        tensors=RowTensors(scales, lora),
    )
