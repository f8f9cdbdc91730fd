"""What one step's adapters do to the projections of its rows, prepared once per step (vLLM's per-step LoRA
indices): which prompt segments or decode rows are scaled by which delta rows, which rows add LoRA from which
table slot, and, at a prefill, the PARA rows whose vectors are computed on the way.

Both runners apply a step through the same three calls, ``scale_input``, ``scale_output_`` and ``lora_``; the
hooks of the transformers forward call them per hooked module, the hand-written Llama step inline. The math is
``paratune.ops``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ... import ops
from ...para.scaling import module_scales
from ...para.site import Site
from .deltas import RowDeltas, SiteKey
from .tables import LoraTables, ParaTables


@dataclass
class PrefillRowsBuilder:
    """Filled by each prompt's adapter kind (``Adapter.prefill_row``)."""
    scaled: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, KV slot) of scaled prompts
    lora: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # path -> [(start, end, table slot)]
    para: list[tuple[int, int, tuple[int, int]]] = field(default_factory=list)  # (table slot, KV slot, pooled span)


@dataclass
class DecodeRowsBuilder:
    """Filled by each decode row's adapter kind (``Adapter.decode_row``)."""
    lora: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  # path -> (rows, table slots)


class StepAdapters:
    """``deltas``: {site: delta tensor} of the sites some running row scales (others are skipped outright);
    ``sides``: which tensor of each site's module is scaled; ``lora``: {module path: this step's LoRA rows}."""

    def __init__(self, deltas: dict[SiteKey, torch.Tensor], sides: dict[SiteKey, str], lora: dict,
                 tables: LoraTables):
        self.deltas, self.sides, self.lora, self.tables = deltas, sides, lora, tables

    def scales_input(self, key: SiteKey) -> bool:
        return key in self.deltas and self.sides[key] == "input"

    def scales_output(self, key: SiteKey) -> bool:
        return key in self.deltas and self.sides[key] == "output"

    def sites(self) -> list[SiteKey]:
        return list(self.deltas)

    def lora_paths(self) -> list[str]:
        return list(self.lora)


class DecodeAdapters(StepAdapters):
    """A decode step: ``deltas`` are (rows, 1, features) views of the running rows; LoRA rows are
    (row indices, table slots) tensors."""

    def scale_input(self, key: SiteKey, x: torch.Tensor) -> torch.Tensor:
        """The projection's input scaled, as a new tensor (the members of a fused group may share x)."""
        delta = self.deltas.get(key)
        return x if delta is None else ops.scaled(x, delta.view(x.shape))

    def scale_output_(self, key: SiteKey, out: torch.Tensor) -> torch.Tensor:
        delta = self.deltas.get(key)
        return out if delta is None else ops.scale_(out, delta.view(out.shape))

    def lora_(self, path: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        rows = self.lora.get(path)
        if rows is None:
            return out
        t = self.tables
        return ops.lora_rows_(out, x, t.a[path], t.b[path], t.scaling, *rows)


class PrefillAdapters(StepAdapters):
    """A packed prefill: ``deltas`` are the (KV slots, features) tables, each scaled prompt reads its own row
    over its own tokens (``scaled``); LoRA rows are [(start, end, table slot)] per module; ``para`` computes the
    PARA rows' vectors before each layer (None: no PARA row in this prefill)."""

    def __init__(self, deltas, sides, lora, tables, scaled: list[tuple[int, int, int]],
                 para: "ParaPrefill | None"):
        super().__init__(deltas, sides, lora, tables)
        self.scaled, self.para = scaled, para

    def scale_input(self, key: SiteKey, x: torch.Tensor) -> torch.Tensor:
        table = self.deltas.get(key)
        return x if table is None or not self.scaled else ops.scale_segments_(x.clone(), table, self.scaled)

    def scale_output_(self, key: SiteKey, out: torch.Tensor) -> torch.Tensor:
        table = self.deltas.get(key)
        return out if table is None or not self.scaled else ops.scale_segments_(out, table, self.scaled)

    def lora_(self, path: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        rows = self.lora.get(path)
        if rows is None:
            return out
        t = self.tables
        return ops.lora_segments_(out, x, t.a[path], t.b[path], t.scaling, rows)

    def before_layer(self, index: int, hidden: torch.Tensor) -> None:
        """Called by the runner with the hidden states (1, S, d) entering decoder layer ``index``."""
        if self.para is not None:
            self.para(index, hidden)


class ParaPrefill:
    """Every PARA row's vectors, from its own prompt, in one batched computation per layer over the adapter
    tables, written into the row's delta rows before the layer runs (so V enters the KV cache already scaled)."""

    def __init__(self, tables: ParaTables, deltas: RowDeltas, layers: nn.ModuleList,
                 layer_sites: Callable[[int, list[str]], dict[str, Site]],
                 members: list[tuple[int, int, tuple[int, int]]], device):
        self.tables, self.deltas, self.layers, self.layer_sites = tables, deltas, layers, layer_sites
        self.table_slots = [table_slot for table_slot, _, _ in members]
        self.kv_slots = torch.tensor([kv_slot for _, kv_slot, _ in members], device=device)
        spans = [span for _, _, span in members]
        if all(spans[j][1] == spans[j + 1][0] for j in range(len(spans) - 1)):  # one contiguous run: a view
            self.tokens = slice(spans[0][0], spans[-1][1])
        else:
            self.tokens = torch.cat([torch.arange(*span, device=device) for span in spans])
        # which member each pooled token belongs to
        self.segments = torch.cat([torch.full((end - start,), j, device=device) for j, (start, end) in enumerate(spans)])

    def __call__(self, index: int, hidden: torch.Tensor) -> None:
        if not self.tables.targets[index]:
            return
        vectors = self.tables.vectors(index, hidden[0, self.tokens], self.segments, self.table_slots)
        sites = self.layer_sites(index, list(vectors))
        deltas = self.deltas
        for path, delta in module_scales(self.layers[index], sites, vectors, deltas.dtype).items():
            key = (index, path)
            if key in deltas.tables:
                deltas.write(key, self.kv_slots, delta[:, 0])
