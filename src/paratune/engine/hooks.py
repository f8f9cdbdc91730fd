"""The engine's hooks on a bare transformers model: per-row scaling deltas and per-row LoRA, read from tables.

The hooks never see adapter names (vLLM's split between adapter management and the math inside layers):
the engine describes each step in ``StepRows`` (which KV slots the rows are, which rows use which LoRA slot)
and the hooks index the tables with it. Scaling sites apply ``out + out * delta[slot]``; a module no running
row scales is skipped outright, and LoRA runs only for the rows that have it.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..para.arch import decoder_layers, module_features
from .adapter_tables import LoraTables


@dataclass
class StepRows:
    kind: str  # "prefill" (one packed row of prompts) | "decode" (one token per row)
    slots: torch.Tensor  # prefill: (S,) KV slot of each token; decode: (B,) KV slot of each row
    view: tuple[int, int] | None = None  # decode, rows are the contiguous slots [lo, hi): index by slicing
    # LoRA, per module path: decode: (row indices, LoRA table slots); prefill: [(start, end, table slot)]
    lora: dict[str, object] = field(default_factory=dict)
    # prefill: (start, end, KV slot) of every prompt whose adapter scales sites (PARA, (IA)^3); the others pay
    # nothing. None: scale every token by its slot's row (a gather of the whole packed row).
    segments: list[tuple[int, int, int]] | None = None
    # decode: the (rows, features) delta view of every site some running row scales, built once per batch
    # composition; a site missing here is skipped.
    views: dict[tuple[int, str], torch.Tensor] | None = None


class EngineHooks:
    def __init__(self, model: nn.Module, num_slots: int, lora: LoraTables):
        self.model = model
        _, self.layers = decoder_layers(model)
        self.num_slots = num_slots
        self.lora = lora
        self.dtype = next(model.parameters()).dtype
        self.deltas: dict[tuple[int, str], torch.Tensor] = {}  # (layer, module path) -> (slots, features)
        self.sides: dict[tuple[int, str], str] = {}  # (layer, module path) -> "output" | "input"
        self.users: collections.Counter = collections.Counter()  # (layer, module path) -> running rows scaled
        self.step: StepRows | None = None
        self._on_prefill_layer: Callable[[int, torch.Tensor], None] | None = None
        self._layer_handles: list = []
        self._handles: list = []
        self._lora_hooked: set[str] = set()

    @property
    def on_prefill_layer(self) -> Callable[[int, torch.Tensor], None] | None:
        """Set by the engine for the duration of a prefill: called with (layer index, hidden states entering
        it). The layers' pre-hooks exist only while it is set, so a decode step pays no hook per layer."""
        return self._on_prefill_layer

    @on_prefill_layer.setter
    def on_prefill_layer(self, callback) -> None:
        self._on_prefill_layer = callback
        if callback is not None and not self._layer_handles:
            self._layer_handles = [layer.register_forward_pre_hook(self._before_layer(i), with_kwargs=True)
                                   for i, layer in enumerate(self.layers)]
        elif callback is None:
            for handle in self._layer_handles:
                handle.remove()
            self._layer_handles = []

    def decode_views(self, view: tuple[int, int] | None, index: torch.Tensor | None) -> dict:
        """{site: (rows, 1, features) deltas of the running rows, shaped like a decode step's projection output}:
        a slice of the table for a contiguous slot range, else a gather (valid until the batch changes, when the
        engine rebuilds it)."""
        out = {}
        for key, count in self.users.items():
            if count > 0:
                table = self.deltas[key]
                out[key] = (table[view[0]: view[1]] if view is not None else table[index]).unsqueeze(1)
        return out

    # ----- scaling sites (PARA vectors, (IA)^3) -----------------------------------------------------------
    def hook_site(self, layer: int, site) -> tuple[int, str]:
        key = (layer, site.module)
        if key in self.deltas:
            return key
        module = self.layers[layer].get_submodule(site.module)
        features = site.features or module_features(module, site.side)
        self.deltas[key] = torch.zeros(self.num_slots, features, dtype=self.dtype, device=self._device())
        self.sides[key] = site.side
        if site.side == "output":
            self._handles.append(module.register_forward_hook(lambda m, a, out: self._scale(key, out)))
        else:
            self._handles.append(module.register_forward_pre_hook(
                lambda m, args: (self._scale(key, args[0]), *args[1:])))
        return key

    def _scale(self, key, x: torch.Tensor) -> torch.Tensor:
        step = self.step
        if step is None:
            return x
        if step.views is not None:  # decode: in place on the module's fresh output
            delta = step.views.get(key)
            if delta is None:
                return x
            return x.addcmul_(x, delta.view(x.shape) if delta.dtype == x.dtype else delta.view(x.shape).to(x.dtype))
        if self.users[key] == 0:
            return x
        table = self.deltas[key]
        if step.segments is not None:
            return scale_segments(x, table, step.segments)
        delta = table[step.view[0]: step.view[1]] if step.view is not None else table[step.slots]
        # (rows or tokens, features) laid out like x: (B, 1, F), (1, S, F), per-head (..., H, D), or flattened.
        return torch.addcmul(x, x, delta.reshape(x.shape).to(x.dtype))

    def _device(self):
        return next(self.model.parameters()).device

    # ----- LoRA ---------------------------------------------------------------------------------------------
    def hook_lora(self, path: str) -> None:
        if path in self._lora_hooked:
            return
        module = self.model.get_submodule(path)

        def add_delta(module, args, output):
            rows = self.step.lora.get(path) if self.step is not None else None
            if rows is None:
                return output
            x = args[0]
            if self.step.kind == "decode":
                return lora_decode_delta(self.lora, path, x, output, rows)
            return lora_prefill_delta(self.lora, path, x, output, rows)  # the module's fresh output

        self._handles.append(module.register_forward_hook(add_delta))
        self._lora_hooked.add(path)

    def _before_layer(self, index: int):
        def hook(module, args, kwargs):
            if self._on_prefill_layer is not None:
                self._on_prefill_layer(index, args[0] if args else kwargs["hidden_states"])

        return hook

    def remove(self) -> None:
        self.on_prefill_layer = None
        for handle in self._handles:
            handle.remove()


def lora_decode_delta(lora: LoraTables, path: str, x: torch.Tensor, output: torch.Tensor, rows) -> torch.Tensor:
    """LoRA's B A x * scaling added, in place, into ``output`` (a projection's fresh output, or a view of a fused
    projection's) for the decode rows that have LoRA on module ``path``: ``rows`` = (row indices, table slots);
    one bmm pair over those rows only."""
    index, slots = rows
    a, b = lora.a[path], lora.b[path]
    xa = torch.bmm(x[index].to(a.dtype), a[slots].transpose(1, 2))  # (n, 1, r)
    delta = torch.bmm(xa, b[slots].transpose(1, 2)) * lora.scaling[slots][:, None, None]
    return output.index_add_(0, index, delta.to(output.dtype))


def lora_prefill_delta(lora: LoraTables, path: str, x: torch.Tensor, output: torch.Tensor, rows) -> torch.Tensor:
    """Prefill of a packed row: LoRA's B A x * scaling added, in place, into ``output`` (1, S, out) for the prompts
    that have LoRA on module ``path``: ``rows`` = [(start, end, table slot)], one matmul pair per prompt (punica's
    segmented LoRA)."""
    a, b, scaling = lora.a[path], lora.b[path], lora.scaling
    for start, end, slot in rows:
        segment = x[:, start:end].to(a.dtype)
        output[:, start:end] += ((segment @ a[slot].T) @ b[slot].T * scaling[slot]).to(output.dtype)
    return output


def scale_segments(x: torch.Tensor, table: torch.Tensor, segments: list[tuple[int, int, int]]) -> torch.Tensor:
    """Prefill: each scaled prompt's tokens times its own delta row, in place on the module's fresh output, a
    view per prompt. Gathering a delta row per token instead would write and read (tokens x features) per site,
    the largest part of PARA's prefill overhead."""
    for start, end, slot in segments:
        part = x[start:end] if x.dim() == 2 else x[0, start:end]  # (tokens, features...) of one prompt
        part.addcmul_(part, table[slot].view(part.shape[1:]).to(x.dtype))
    return x
