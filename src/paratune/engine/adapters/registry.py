"""The device tier: the adapters installed in the slot tables (``tables``), at most ``max_active`` of them,
least recently used evicted first, and the per-row deltas (``deltas``) of the rows that use them. The engine asks
it three things: install an adapter for the rows about to prefill (``install``), a row joins or leaves, and what a
step's rows need (``for_prefill`` / ``for_decode``).

A PARA or (IA)^3 adapter needs its slot only while its rows prefill (their deltas carry them afterwards); a LoRA
adapter needs it until its last row finishes. The engine passes the names it may not evict (``busy``).
"""

from __future__ import annotations

import collections

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
    def __init__(self, model: nn.Module, num_slots: int, dtype: torch.dtype, device, max_active: int = 32):
        if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
            raise ValueError(f"max_active_adapters must be an integer >= 1, got {max_active!r}")
        self.backbone = Backbone(model)
        self.model, self.layers, self.device = model, self.backbone.layers, device
        config = model.config.get_text_config()
        self.para = ParaTables(len(self.layers), config.hidden_size, self.backbone.para_dtype, device)
        self.lora = LoraTables(dtype, device)
        self.deltas = RowDeltas(num_slots, dtype, device)
        self.max_active = max_active
        self.adapters: collections.OrderedDict[str, Adapter] = collections.OrderedDict()  # installed; first = LRU
        self.evictions = 0
        self._sites: dict[tuple[int, tuple[str, ...]], dict[str, Site]] = {}

    # ----- the device tier ----------------------------------------------------------------------------------
    # Tables are written in inference mode wherever the call comes from (a step, or add_adapter from user code):
    # a tensor made in inference mode may only be updated in it.
    @torch.inference_mode()
    def install(self, adapter: Adapter, busy: set[str]) -> Adapter | None:
        """The installed copy of host adapter ``adapter``, installing it first (evicting the least recently used
        adapter not in ``busy`` when all ``max_active`` slots are taken). None when every slot is busy."""
        installed = self.adapters.get(adapter.name)
        if installed is not None:
            self.adapters.move_to_end(adapter.name)
            return installed
        if len(self.adapters) >= self.max_active:
            victim = next((name for name in self.adapters if name not in busy), None)
            if victim is None:
                return None
            self.evict(victim)
            self.evictions += 1
        installed = self.adapters[adapter.name] = adapter.install(self)
        return installed

    @torch.inference_mode()
    def evict(self, name: str) -> None:
        """Free ``name``'s slot (no row may still read it: the engine keeps running LoRA adapters busy)."""
        installed = self.adapters.pop(name, None)
        if installed is not None:
            installed.uninstall(self)

    def kinds(self) -> dict[str, str]:
        return {name: self.adapters[name].kind for name in sorted(self.adapters)}

    def __contains__(self, name: str | None) -> bool:
        return name in self.adapters

    @property
    def table_bytes(self) -> int:
        """Bytes of the slot tables (they grow by doubling up to the slots in use)."""
        tensors = [t for layer in self.para.layers for t in layer.values()]
        tensors += [*self.lora.a.values(), *self.lora.b.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

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
