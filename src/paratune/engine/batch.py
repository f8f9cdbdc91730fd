"""The per-step batch: everything a runner and the KV cache need to run one step, built once per step and
passed to them as an argument (nothing about a step is planted on a shared object).

``BatchBuilder`` owns the only per-slot tensors of the loop (each slot's next position and next input token) and
builds the three kinds of step:

* ``prefill``: the admitted prompts packed into one row (no padding), each with its KV slot, positions and
  segment; logits are kept at each prompt's last token;
* ``decode``: one token per running row, rows in slot order, so the step's KV is usually a contiguous view of
  the cache. What depends only on which requests run (slot range, index tensors, the adapters' per-row
  tensors, the sampler's per-row parameters) is built when a row joins or leaves, not every step;
* ``score``: one prompt, every position's logits, no KV written (echo scoring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters import AdapterRegistry, DecodeAdapters, PrefillAdapters
from .request import Request
from .sampler import Sampler


@dataclass
class Batch:
    kind: str  # "prefill" (packed prompts; also echo scoring) | "decode" (one token per row)
    requests: list[Request]
    slots: list[int]  # the KV slot of each request
    input_ids: torch.Tensor  # prefill: (S,) the packed prompts; decode: (B,) each row's next token
    positions: torch.Tensor  # (S,) | (B,)
    token_slots: torch.Tensor  # the KV slot of each token (prefill) or row (decode)
    adapters: PrefillAdapters | DecodeAdapters
    sampler: Sampler | None = None  # the rows' sampling parameters (None: scoring samples nothing)
    # prefill
    segments: tuple[tuple[int, int], ...] = ()  # [start, end) of each prompt in the packed row
    last: torch.Tensor | None = None  # each prompt's last token: the logits kept (None: every position)
    write_kv: bool = True
    # decode
    view: tuple[int, int] | None = None  # the slot range [lo, hi) attended over
    rows_in_view: torch.Tensor | None = None  # each row's index inside the view (None: all, in order)
    length: int = 0  # positions attended over (the longest row's length)
    mask: torch.Tensor | None = None  # (view rows, 1, 1, length) additive: each row stops at its own length


@dataclass
class _DecodeRows:
    """The part of a decode batch that changes only when a row joins or leaves."""
    key: tuple
    requests: list[Request]
    slots: list[int]
    view: tuple[int, int]
    index: torch.Tensor | None  # slot indices when the rows are not a contiguous range
    token_slots: torch.Tensor
    rows_in_view: torch.Tensor | None
    adapters: DecodeAdapters
    sampler: Sampler


class BatchBuilder:
    def __init__(self, num_slots: int, adapters: AdapterRegistry, dtype: torch.dtype, device):
        self.adapters, self.dtype, self.device = adapters, dtype, device
        self.positions = torch.zeros(num_slots, dtype=torch.long, device=device)  # next position per slot
        self.next_tokens = torch.zeros(num_slots, dtype=torch.long, device=device)  # next input token per slot
        self._decode_rows: _DecodeRows | None = None

    def prefill(self, requests: list[Request], slots: list[int]) -> Batch:
        """The admitted ``requests`` (already joined to their KV ``slots``) as one packed row."""
        lengths = [len(r.prompt_ids) for r in requests]
        ends = torch.tensor(lengths).cumsum(0).tolist()
        segments = tuple((end - n, end) for end, n in zip(ends, lengths))
        return Batch(
            "prefill", requests, slots,
            input_ids=torch.tensor([t for r in requests for t in r.prompt_ids], device=self.device),
            positions=torch.cat([torch.arange(n, device=self.device) for n in lengths]),
            token_slots=torch.tensor([s for s, n in zip(slots, lengths) for _ in range(n)], device=self.device),
            adapters=self.adapters.for_prefill(requests, slots, list(segments), list(segments)),
            sampler=self._sampler(requests), segments=segments,
            last=torch.tensor(lengths, device=self.device).cumsum(0) - 1)

    def score(self, request: Request, slot: int, context: int) -> Batch:
        """One prompt (joined to a borrowed ``slot``) whose every position is scored, writing no KV; a PARA
        adapter pools tokens [0, context) only, never the continuation being scored."""
        length = len(request.prompt_ids)
        segments = ((0, length),)
        return Batch(
            "prefill", [request], [slot], input_ids=torch.tensor(request.prompt_ids, device=self.device),
            positions=torch.arange(length, device=self.device),
            token_slots=torch.full((length,), slot, device=self.device),
            adapters=self.adapters.for_prefill([request], [slot], list(segments), [(0, context)]),
            segments=segments, last=None, write_kv=False)

    def decode(self, running: dict[int, Request]) -> Batch:
        """One decode step of the ``running`` rows ({KV slot: request})."""
        rows = self._rows(running)
        lo, hi = rows.view
        index = rows.index
        positions = self.positions[lo:hi] if index is None else self.positions[index]
        tokens = self.next_tokens[lo:hi] if index is None else self.next_tokens[index]
        longest = max(len(r.prompt_ids) + len(r.output_ids) for r in rows.requests)  # host-side: no sync
        return Batch("decode", rows.requests, rows.slots, input_ids=tokens, positions=positions, token_slots=rows.token_slots,
                     adapters=rows.adapters, sampler=rows.sampler, view=rows.view, rows_in_view=rows.rows_in_view,
                     length=longest, mask=decode_mask(self.positions[lo:hi] + 1, longest, self.dtype))

    def advance(self, batch: Batch, tokens: torch.Tensor) -> None:
        """After the step: each row's next input is its new token, at the next position."""
        if batch.kind == "prefill":
            slots = torch.tensor(batch.slots, device=self.device)
            self.positions[slots] = torch.tensor([len(r.prompt_ids) for r in batch.requests], device=self.device)
            self.next_tokens[slots] = tokens
            return
        lo, hi = batch.view
        index = None if batch.rows_in_view is None else batch.token_slots  # holes in the range: by slot
        if index is None:
            self.positions[lo:hi] += 1
            self.next_tokens[lo:hi] = tokens
        else:
            self.positions[index] += 1
            self.next_tokens[index] = tokens

    def _rows(self, running: dict[int, Request]) -> _DecodeRows:
        slots = sorted(running)
        key = tuple((s, running[s].id) for s in slots)
        if self._decode_rows is not None and self._decode_rows.key == key:
            return self._decode_rows
        requests = [running[s] for s in slots]
        lo, hi = slots[0], slots[-1] + 1
        contiguous = hi - lo == len(slots)
        index = None if contiguous else torch.tensor(slots, device=self.device)
        # with holes in the range, the queries are scattered into the view's rows (kv_cache.over_view_rows)
        rows_in_view = None if contiguous else torch.tensor([s - lo for s in slots], device=self.device)
        self._decode_rows = _DecodeRows(key, requests, slots, (lo, hi), index, torch.tensor(slots, device=self.device),
                                        rows_in_view, self.adapters.for_decode(requests, (lo, hi), index),
                                        self._sampler(requests))
        return self._decode_rows

    def _sampler(self, requests: list[Request]) -> Sampler:
        """The rows' sampling parameters as device tensors (built once per batch composition, not per step)."""
        return Sampler(self.device, [r.params for r in requests], [r.generator for r in requests])


def decode_mask(lengths: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """(V, 1, 1, L) additive mask: view row j attends to positions < lengths[j]."""
    allowed = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=lengths.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None, None, :]
