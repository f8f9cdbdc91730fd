"""The engine's KV cache: preallocated per-slot tensors written in place (gpt-fast style).

Every running request owns one slot: row ``slot`` of each layer's ``keys`` / ``values`` tensors
(slots, kv_heads, capacity, head_dim), allocated once in the model's dtype. A request joining writes its own
slot; a request leaving frees it; no other row is ever copied or moved. ``bytes`` is the memory really held,
and admission counts against it (a request needs a free slot and prompt + max_tokens <= capacity).

The transformers model sees this object as its ``past_key_values``: each attention layer calls ``update``
with the new keys/values of the step, which are written at each token's (slot, position), and gets back what
to attend over. The engine says what the step is before the forward (``plan_prefill`` / ``plan_decode``), and
``slot_attention`` (registered as an attention implementation) reads the plan:

* prefill, packed: the admitted prompts are concatenated into one row (no padding); attention runs per prompt
  over its own tokens, so no prompt pays for another's length;
* decode: one token per running row; rows are kept in slot order, so the rows of a step usually occupy a
  contiguous range of slots and keys/values are a view of the cache (no gather). Attention covers the range's
  longest length; each row's mask stops at its own length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

ATTENTION_NAME = "paratune_slots"


@dataclass
class StepPlan:
    kind: str  # "prefill" | "decode"
    slots: torch.Tensor  # prefill: (S,) slot of each packed token; decode: (B,) slot of each row
    positions: torch.Tensor  # prefill: (S,) position of each packed token; decode: (B,) position written
    segments: list[tuple[int, int]] | None = None  # prefill: [start, end) of each prompt in the packed row
    view: tuple[int, int] | None = None  # decode: the slot range [lo, hi) attended over
    rows_in_view: torch.Tensor | None = None  # decode: each row's index inside the view (None: all, in order)
    length: int = 0  # decode: positions attended over (max position + 1 in the view)


class SlotKVCache:
    is_compileable = False

    def __init__(self, shapes: list[tuple[int, int]], num_slots: int, capacity: int, dtype: torch.dtype,
                 device: torch.device):
        """``shapes``: (kv_heads, head_dim) of each attention layer, in call order."""
        self.num_slots, self.capacity = num_slots, capacity
        self.keys = [torch.zeros(num_slots, h, capacity, d, dtype=dtype, device=device) for h, d in shapes]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.plan: StepPlan | None = None

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    # ----- what transformers calls ----------------------------------------------------------------------
    def update(self, key_states, value_states, layer_idx: int, cache_kwargs=None):
        plan, keys, values = self.plan, self.keys[layer_idx], self.values[layer_idx]
        if plan.kind == "prefill":  # (1, h, S, d): token t goes to (slots[t], positions[t])
            keys[plan.slots, :, plan.positions] = key_states[0].transpose(0, 1)
            values[plan.slots, :, plan.positions] = value_states[0].transpose(0, 1)
            return key_states, value_states  # attention runs over the packed prompts themselves
        keys[plan.slots, :, plan.positions] = key_states[:, :, 0]  # (B, h, 1, d): one token per row
        values[plan.slots, :, plan.positions] = value_states[:, :, 0]
        lo, hi = plan.view
        return keys[lo:hi, :, : plan.length], values[lo:hi, :, : plan.length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.plan is None or self.plan.kind == "prefill" else self.plan.length - 1

    def get_mask_sizes(self, *args, **kwargs):
        raise NotImplementedError("the engine passes its own attention masks")

    # ----- the engine's side ----------------------------------------------------------------------------
    def plan_prefill(self, slots: list[int], lengths: list[int], device) -> StepPlan:
        token_slots = torch.tensor([s for s, n in zip(slots, lengths) for _ in range(n)], device=device)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])
        ends = torch.tensor(lengths).cumsum(0).tolist()
        segments = [(end - n, end) for end, n in zip(ends, lengths)]
        self.plan = StepPlan("prefill", token_slots, positions, segments=segments)
        return self.plan

    def plan_decode(self, slots: list[int], positions: torch.Tensor, max_position: int, device) -> StepPlan:
        lo, hi = slots[0], slots[-1] + 1
        rows_in_view = None
        if hi - lo != len(slots):  # holes in the range: scatter the queries into the range's rows
            rows_in_view = torch.tensor([s - lo for s in slots], device=device)
        self.plan = StepPlan("decode", torch.tensor(slots, device=device), positions, view=(lo, hi),
                             rows_in_view=rows_in_view, length=max_position + 1)
        return self.plan


def causal_mask(length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """(1, 1, T, T) additive causal mask (finite minimum, not -inf: no NaN on fully masked rows)."""
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[None, None]


def decode_mask(lengths: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """(V, 1, 1, L) additive mask: view row j attends to positions < lengths[j]."""
    allowed = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=lengths.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None, None, :]


def slot_attention(module, query, key, value, attention_mask, **kwargs):
    """The attention of a model served by the engine: the model's own implementation (eager or SDPA) applied
    per packed prompt at prefill, and over the cache view at decode."""
    cache: SlotKVCache = module._paratune_cache
    name = module._paratune_inner_attention
    inner = module._paratune_eager if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]
    plan = cache.plan
    if plan.kind == "prefill":
        outputs = []
        for start, end in plan.segments:
            mask = _cached_causal(module, end - start, query.dtype, query.device)
            out, _ = inner(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], mask,
                           **kwargs)
            outputs.append(out)
        return torch.cat(outputs, dim=1), None  # (1, S, heads, head_dim)
    return over_view_rows(plan, query, key.shape[0],
                          lambda q: inner(module, q, key, value, attention_mask, **kwargs)[0]), None


def over_view_rows(plan: StepPlan, query: torch.Tensor, view_rows: int, attend) -> torch.Tensor:
    """``attend(query)`` at a decode step, where query row i belongs to the cache view's row
    ``plan.rows_in_view[i]``: with holes in the slot range the queries are scattered into the view's rows (zeros
    elsewhere, their outputs dropped), so one attention call covers the contiguous view."""
    if plan.rows_in_view is None:
        return attend(query)
    full = query.new_zeros(view_rows, *query.shape[1:])
    full[plan.rows_in_view] = query
    return attend(full)[plan.rows_in_view]


def _cached_causal(module, length: int, dtype, device) -> torch.Tensor:
    masks = module.__dict__.setdefault("_paratune_causal", {})
    if (length, dtype) not in masks:
        masks.clear() if len(masks) > 64 else None
        masks[(length, dtype)] = causal_mask(length, dtype, device)
    return masks[(length, dtype)]


AttentionInterface.register(ATTENTION_NAME, slot_attention)
