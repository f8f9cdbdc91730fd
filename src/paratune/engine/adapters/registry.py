"""The adapters resident in the engine, by name: read from disk (``bank``), installed into the slot tables
(``tables``), and the per-row deltas (``deltas``) of the rows that use them. The engine asks it three things:
load or unload an adapter, a row joins or leaves, and what a step's rows need (``for_prefill`` / ``for_decode``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...para.arch import Site, module_features, resolve_sites
from ..request import Request
from .bank import AdapterError, Backbone
from .deltas import RowDeltas, SiteKey
from .kinds import Adapter
from .rows import DecodeAdapters, DecodeRowsBuilder, ParaPrefill, PrefillAdapters, PrefillRowsBuilder
from .tables import LoraTables, ParaTables


class AdapterRegistry:
    def __init__(self, model: nn.Module, num_slots: int, dtype: torch.dtype, device):
        self.backbone = Backbone(model)
        self.model, self.layers, self.device = model, self.backbone.layers, device
        config = model.config.get_text_config()
        # PARA's generators run in fp32 under a half-precision model (their pooled sums and rational activation)
        table_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.para = ParaTables(len(self.layers), config.hidden_size, table_dtype, device)
        self.lora = LoraTables(dtype, device)
        self.deltas = RowDeltas(num_slots, dtype, device)
        self.adapters: dict[str, Adapter] = {}
        self._sites: dict[tuple[int, tuple[str, ...]], dict[str, Site]] = {}

    # ----- loading ----------------------------------------------------------------------------------------
    def add(self, name: str, path: str | Path) -> Adapter:
        if name in self.adapters:
            raise AdapterError(f"an adapter named {name!r} is already loaded")
        adapter = self.backbone.read(name, path)
        adapter.install(self)
        self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> None:
        """Unload ``name``; its rows must have left (the engine's callers wait for them)."""
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r}; loaded: {sorted(self.adapters)}")
        self.adapters.pop(name).uninstall(self)

    def kinds(self) -> dict[str, str]:
        return {name: self.adapters[name].kind for name in sorted(self.adapters)}

    def __contains__(self, name: str | None) -> bool:
        return name in self.adapters

    # ----- sites (called by the kinds while they install) -------------------------------------------------
    def layer_sites(self, index: int, targets) -> dict[str, Site]:
        key = (index, tuple(targets))
        if key not in self._sites:  # resolving is ~0.1 ms a layer: once per (layer, targets), not per prefill
            self._sites[key] = resolve_sites(self.model, self.layers[index], list(targets))
        return self._sites[key]

    def add_site(self, index: int, site: Site) -> SiteKey:
        """A delta table for ``site`` of layer ``index`` (shared by every adapter that scales it)."""
        key = (index, site.module)
        if key not in self.deltas.tables:
            module = self.layers[index].get_submodule(site.module)
            self.deltas.add_site(key, site.features or module_features(module, site.side), site.side)
        return key

    def ia3_site(self, path: str, vector: torch.Tensor, side: str) -> tuple[int, Site]:
        prefix = self.backbone.layers_path + "."
        if not path.startswith(prefix):
            raise AdapterError(f"(IA)^3 on {path!r} (outside the decoder layers) is not served")
        index, _, inner = path[len(prefix):].partition(".")
        return int(index), Site(inner, side, 0, vector.numel())

    # ----- rows -----------------------------------------------------------------------------------------------
    def join(self, kv_slot: int, request: Request) -> None:
        adapter = self._of(request)
        if adapter is None:
            self.deltas.join(kv_slot, [])
        else:
            adapter.join(kv_slot, self.deltas)

    def leave(self, kv_slot: int) -> None:
        self.deltas.leave(kv_slot)

    def for_prefill(self, requests: list[Request], kv_slots: list[int], segments: list[tuple[int, int]],
                    pooled: list[tuple[int, int]]) -> PrefillAdapters:
        """The adaptations of a packed prefill of ``requests`` (already joined) at ``segments``; a PARA prompt
        pools ``pooled`` (its whole prompt, or only the context when a continuation is scored)."""
        rows = PrefillRowsBuilder()
        for request, kv_slot, segment, pool in zip(requests, kv_slots, segments, pooled):
            adapter = self._of(request)
            if adapter is not None:
                adapter.prefill_row(rows, kv_slot, segment, pool)
        para = ParaPrefill(self.para, self.deltas, self.layers, self.layer_sites, rows.para, self.device) \
            if rows.para else None
        return PrefillAdapters(self.deltas.active(), self.deltas.sides, rows.lora, self.lora, rows.scaled, para)

    def for_decode(self, requests: list[Request], view: tuple[int, int], index: torch.Tensor | None
                   ) -> DecodeAdapters:
        """The adaptations of a decode step over ``requests`` in slot order (slots ``view``, or ``index`` when
        the range has holes); valid until the running rows change."""
        rows = DecodeRowsBuilder()
        for row, request in enumerate(requests):
            adapter = self._of(request)
            if adapter is not None:
                adapter.decode_row(rows, row)
        lora = {path: (torch.tensor(i, device=self.device), torch.tensor(s, device=self.device))
                for path, (i, s) in rows.lora.items()}
        return DecodeAdapters(self.deltas.decode_views(view, index), self.deltas.sides, lora, self.lora)

    def _of(self, request: Request) -> Adapter | None:
        return self.adapters.get(request.adapter) if request.adapter is not None else None
