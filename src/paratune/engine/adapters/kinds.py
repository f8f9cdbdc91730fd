"""The adapter kinds the engine serves, one small class each, one interface: how a loaded adapter enters the
tables (``install`` / ``uninstall``: write or free a slot), what a row of it does when it joins the batch
(``join``), and what it asks of a step's rows (``prefill_row`` / ``decode_row``). Shared code never asks which
kind an adapter is; adding a kind means adding a class here and its loader in ``bank.py``.

* PARA: the generators live in ``ParaTables``; a row's vectors are computed from its own prompt during its
  prefill and written into its rows of ``RowDeltas``; at decode it only multiplies.
* LoRA: A and B live in ``LoraTables``; every step gathers them by the row's table slot.
* (IA)^3: no table; a row writes ``l - 1`` into its ``RowDeltas`` rows when it joins and then behaves like PARA.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch

from ...para.config import ParaConfig
from ...para.generator import VectorGenerator
from ...para.site import Site
from .deltas import RowDeltas, SiteKey
from .rows import DecodeRowsBuilder, PrefillRowsBuilder
from .tables import LoraTables, ParaTables


class Host(Protocol):
    """What installing an adapter needs of its host (``AdapterRegistry``): the tables and the backbone's sites."""
    para: ParaTables
    lora: LoraTables

    def layer_sites(self, index: int, targets) -> dict[str, Site]: ...

    def add_site(self, index: int, site: Site) -> SiteKey: ...

    def ia3_site(self, path: str, vector: torch.Tensor, side: str) -> tuple[int, Site]: ...


class Adapter:
    kind: ClassVar[str]
    name: str
    slot: int | None = None  # its slot in its kind's tables, once installed
    sites: list[SiteKey]  # the sites its rows scale (PARA, (IA)^3)
    lora_modules: list[str]  # the module paths its rows add LoRA to

    def install(self, registry: Host) -> None:
        raise NotImplementedError

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

    def __init__(self, name: str, config: ParaConfig, generators: dict[int, VectorGenerator]):
        self.name, self.config, self.generators = name, config, generators
        self.sites, self.lora_modules = [], []

    def install(self, registry: Host) -> None:
        for index in self.generators:
            for site in registry.layer_sites(index, self.config.targets).values():
                self.sites.append(registry.add_site(index, site))
        self.sites = list(dict.fromkeys(self.sites))
        self.slot = registry.para.add(self.name, self.generators)
        # The tables hold the weights now. Thousands of adapters' modules kept alive were ~10^5 long-lived objects
        # that every full garbage collection walked.
        self.generators = None

    def uninstall(self, registry: Host) -> None:
        registry.para.remove(self.name)

    def prefill_row(self, rows, kv_slot, segment, pooled) -> None:
        rows.scaled.append((*segment, kv_slot))
        rows.para.append((self.slot, kv_slot, pooled))


class LoraAdapter(Adapter):
    kind = "LORA"

    def __init__(self, name: str, r: int, scaling: float, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.name, self.r, self.scaling, self.weights = name, r, scaling, weights  # path -> (A (r, in), B (out, r))
        self.sites, self.lora_modules = [], list(weights)

    def install(self, registry: Host) -> None:
        self.slot = registry.lora.add(self.name, self.scaling, self.weights)
        self.weights = None  # the table holds them now

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

    def install(self, registry: Host) -> None:
        for path, (vector, side) in self.vectors.items():
            key = registry.add_site(*registry.ia3_site(path, vector, side))
            self.sites.append(key)
            self._deltas.append((key, vector - 1))
        self.vectors = None

    def join(self, kv_slot: int, deltas: RowDeltas) -> None:
        for key, delta in self._deltas:
            deltas.write(key, kv_slot, delta)
        deltas.join(kv_slot, self.sites)

    def prefill_row(self, rows, kv_slot, segment, pooled) -> None:
        rows.scaled.append((*segment, kv_slot))
