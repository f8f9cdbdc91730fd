"""The adapter kinds the engine serves, one small class each, one interface: how a loaded adapter enters the
tables (``install``: write a slot, returning the installed adapter; ``uninstall``: free it), what a row of it does
when it joins the batch (``join``), and what it asks of a step's rows (``prefill_row`` / ``decode_row``). Shared
code never asks which kind an adapter is; adding a kind means adding a class here and its loader in ``bank.py``.

An adapter read from disk is the host copy the store caches (``weights`` kept, ``slot`` None); ``install`` leaves
it untouched and returns a slim copy holding only the slot and sites, so the device tier can evict and reinstall
it from the host copy while the host tier evicts independently.

* PARA: the generators live in ``ParaTables``; a row's vectors are computed from its own prompt during its
  prefill and written into its rows of ``RowDeltas``; at decode it only multiplies.
* LoRA: A and B live in ``LoraTables``; every step gathers them by the row's table slot.
* (IA)^3: no table; a row writes ``l - 1`` into its ``RowDeltas`` rows when it joins and then behaves like PARA.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Protocol

import torch

from ...para.config import ParaConfig
from ...para.site import Site
from .deltas import RowDeltas, SiteKey
from .rows import DecodeRowsBuilder, PrefillRowsBuilder
from .tables import LoraTables, ParaLayer, ParaTables


class Host(Protocol):
    """What installing an adapter needs of its host (``AdapterRegistry``): the tables and the backbone's sites."""
    para: ParaTables
    lora: LoraTables

    def layer_sites(self, index: int, targets) -> dict[str, Site]: ...

    def add_site(self, index: int, site: Site) -> SiteKey: ...

    def ia3_site(self, path: str, vector: torch.Tensor, side: str) -> tuple[int, Site]: ...


class Adapter:
    kind: ClassVar[str]
    # Whether a decoding row still reads this adapter's weights. PARA and (IA)^3 rows carry their own deltas
    # after their prefill (PARA) or join ((IA)^3): only their prefill needs the adapter resident.
    decodes_with_weights: ClassVar[bool] = False
    name: str
    slot: int | None = None  # its slot in its kind's tables, once installed
    sites: list[SiteKey]  # the sites its rows scale (PARA, (IA)^3)
    lora_modules: list[str]  # the module paths its rows add LoRA to
    nbytes: int = 0  # bytes of the host copy's tensors

    def install(self, registry: Host) -> "Adapter":
        """Write this (host) adapter into ``registry``'s tables; returns the installed copy (slot and sites, no
        weights). ``self`` is left as it was."""
        raise NotImplementedError

    def _installed(self) -> "Adapter":
        slim = copy.copy(self)
        slim.sites, slim.lora_modules = list(self.sites), list(self.lora_modules)
        return slim

    def uninstall(self, registry: Host) -> None:
        pass

    def join(self, kv_slot: int, deltas: RowDeltas) -> None:
        """A request of this adapter takes KV slot ``kv_slot`` (leaving is the same for every kind:
        ``RowDeltas.leave``)."""
        deltas.join(kv_slot, self.sites)

    def prefill_row(self, rows: PrefillRowsBuilder, kv_slot: int, segment: tuple[int, int],
                    pooled: tuple[int, int]) -> None:
        """Add a prompt at ``segment`` of the packed row (its PARA pool: ``pooled``) to the step's adaptations."""

    def decode_row(self, rows: DecodeRowsBuilder, row: int) -> None:
        """Add decode row ``row`` to the step's adaptations (scaling rows need nothing: their deltas are read by
        KV slot)."""


class ParaAdapter(Adapter):
    kind = "PARA"

    def __init__(self, name: str, config: ParaConfig, layers: dict[int, ParaLayer], activation):
        """``layers``: plain tensors per decoder layer (no ``nn.Module``: thousands of cached adapters' modules
        were ~10^5 long-lived objects that every full garbage collection walked); ``activation``: "rational" or
        the fixed activation module."""
        self.name, self.config, self.layers, self.activation = name, config, layers, activation
        self.sites, self.lora_modules = [], []
        self.nbytes = sum(layer.nbytes for layer in layers.values())

    def install(self, registry: Host) -> "ParaAdapter":
        installed = self._installed()
        installed.layers = None  # the tables hold the weights; the host copy keeps its own
        for index in self.layers:
            for site in registry.layer_sites(index, self.config.targets).values():
                installed.sites.append(registry.add_site(index, site))
        installed.sites = list(dict.fromkeys(installed.sites))
        installed.slot = registry.para.add(self.name, self.layers, self.config.pooling, self.activation)
        return installed

    def uninstall(self, registry: Host) -> None:
        registry.para.remove(self.name)

    def prefill_row(self, rows, kv_slot, segment, pooled) -> None:
        rows.scaled.append((*segment, kv_slot))
        rows.para.append((self.slot, kv_slot, pooled))


class LoraAdapter(Adapter):
    kind = "LORA"
    decodes_with_weights = True  # every decode step gathers A and B by the row's table slot

    def __init__(self, name: str, r: int, scaling: float, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.name, self.r, self.scaling, self.weights = name, r, scaling, weights  # path -> (A (r, in), B (out, r))
        self.sites, self.lora_modules = [], list(weights)
        self.nbytes = sum(t.numel() * t.element_size() for pair in weights.values() for t in pair)

    def install(self, registry: Host) -> "LoraAdapter":
        installed = self._installed()
        installed.weights = None  # the table holds them now
        installed.slot = registry.lora.add(self.name, self.scaling, self.weights)
        return installed

    def uninstall(self, registry: Host) -> None:
        registry.lora.remove(self.name)

    def prefill_row(self, rows, kv_slot, segment, pooled) -> None:
        for path in self.lora_modules:
            rows.lora.setdefault(path, []).append((*segment, self.slot))

    def decode_row(self, rows, row) -> None:
        for path in self.lora_modules:
            index, slots = rows.lora.setdefault(path, ([], []))
            index.append(row)
            slots.append(self.slot)


class Ia3Adapter(Adapter):
    kind = "IA3"

    def __init__(self, name: str, vectors: dict[str, tuple[torch.Tensor, str]]):
        self.name, self.vectors = name, vectors  # module path -> (vector l, "output" | "input")
        self.sites, self.lora_modules = [], []
        self._deltas: list[tuple[SiteKey, torch.Tensor]] = []
        self.nbytes = sum(v.numel() * v.element_size() for v, _ in vectors.values())

    def install(self, registry: Host) -> "Ia3Adapter":
        installed = self._installed()
        installed.vectors, installed._deltas = None, []
        for path, (vector, side) in self.vectors.items():
            key = registry.add_site(*registry.ia3_site(path, vector, side))
            installed.sites.append(key)
            installed._deltas.append((key, vector - 1))
        return installed

    def join(self, kv_slot: int, deltas: RowDeltas) -> None:
        for key, delta in self._deltas:
            deltas.write(key, kv_slot, delta)
        deltas.join(kv_slot, self.sites)

    def prefill_row(self, rows, kv_slot, segment, pooled) -> None:
        rows.scaled.append((*segment, kv_slot))
