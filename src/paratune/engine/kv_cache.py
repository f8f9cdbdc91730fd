"""The engine's KV cache: preallocated per-slot tensors written in place (gpt-fast style).

Every running request owns one slot: row ``slot`` of each layer's ``keys`` / ``values`` tensors
(slots, kv_heads, capacity, head_dim), allocated once in the model's dtype. A request joining writes its own
slot; a request leaving frees it; no other row is ever copied or moved. ``bytes`` is the memory really held,
and admission counts against it (a request needs a free slot and prompt + max_tokens <= capacity).

``update(keys, values, layer, batch)`` writes a step's new keys/values at each token's (slot, position), as the
step's ``Batch`` says, and returns what the step attends over:

* prefill, packed: the admitted prompts are concatenated into one row (no padding); attention runs per prompt
  over its own tokens (``batch.segments``), so no prompt pays for another's length;
* decode: one token per running row; rows are kept in slot order, so the rows of a step usually occupy a
  contiguous range of slots and keys/values are a view of the cache (no gather). Attention covers the range's
  longest length; each row's mask stops at its own length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .batch import Batch


class SlotKVCache:
    is_compileable = False

    def __init__(self, shapes: list[tuple[int, int]], num_slots: int, capacity: int, dtype: torch.dtype,
                 device: torch.device):
        """``shapes``: (kv_heads, head_dim) of each attention layer, in call order."""
        self.num_slots, self.capacity = num_slots, capacity
        self.keys = [torch.zeros(num_slots, h, capacity, d, dtype=dtype, device=device) for h, d in shapes]
        self.values = [torch.zeros_like(k) for k in self.keys]

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer: int, batch: "Batch"):
        """Write the step's keys/values (prefill (1, h, S, d); decode (B, h, 1, d)) and return what it attends
        over: the packed prompts themselves at prefill, the cache view of the rows' slot range at decode."""
        keys, values = self.keys[layer], self.values[layer]
        if batch.kind == "prefill":  # token t goes to (token_slots[t], positions[t])
            if batch.write_kv:
                keys[batch.token_slots, :, batch.positions] = key_states[0].transpose(0, 1)
                values[batch.token_slots, :, batch.positions] = value_states[0].transpose(0, 1)
            return key_states, value_states
        keys[batch.token_slots, :, batch.positions] = key_states[:, :, 0]  # one token per row
        values[batch.token_slots, :, batch.positions] = value_states[:, :, 0]
        lo, hi = batch.view
        return keys[lo:hi, :, : batch.length], values[lo:hi, :, : batch.length]


def causal_mask(length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 1, T, T) additive causal mask (finite minimum, not -inf: no NaN on fully masked rows)."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[None, None]


def over_view_rows(batch: "Batch", query: torch.Tensor, view_rows: int, attend) -> torch.Tensor:
    """``attend(query)`` at a decode step, where query row i belongs to the cache view's row
    ``batch.rows_in_view[i]``: with holes in the slot range the queries are scattered into the view's rows (zeros
    elsewhere, their outputs dropped), so one attention call covers the contiguous view."""
    if batch.rows_in_view is None:
        return attend(query)
    full = query.new_zeros(view_rows, *query.shape[1:])
    full[batch.rows_in_view] = query
    return attend(full)[batch.rows_in_view]
