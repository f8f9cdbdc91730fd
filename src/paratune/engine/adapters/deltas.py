"""The per-row scaling deltas: what a running PARA or (IA)^3 row multiplies its projections by.

One table per scaled site, (KV slots, features) in the model's dtype, indexed by the row's KV slot: a PARA row's
vectors (written during its prefill), an (IA)^3 row's ``l - 1`` (written when it joins), zero for every other
row, so a step applies ``out + out * delta[rows]`` and a row without scaling is exactly unchanged. This is why a
decoding PARA row needs only its own deltas, never its adapter's weights.

A site counts the running rows that scale it (``users``): a site no running row scales is skipped outright, so a
batch of base and LoRA rows pays nothing for the PARA adapters that are merely loaded.
"""

from __future__ import annotations

import collections

import torch

SiteKey = tuple[int, str]  # (decoder layer index, module path inside the layer)


class RowDeltas:
    def __init__(self, num_slots: int, dtype: torch.dtype, device):
        self.num_slots, self.dtype, self.device = num_slots, dtype, device
        self.tables: dict[SiteKey, torch.Tensor] = {}  # site -> (KV slots, features)
        self.sides: dict[SiteKey, str] = {}  # site -> "output" | "input": which tensor of the module is scaled
        self.users: collections.Counter[SiteKey] = collections.Counter()  # site -> running rows that scale it
        self._rows: dict[int, list[SiteKey]] = {}  # KV slot -> the sites its row scales

    def add_site(self, key: SiteKey, features: int, side: str) -> bool:
        """A table for a site an adapter scales (once per site, shared by every adapter); True when new."""
        if key in self.tables:
            return False
        self.tables[key] = torch.zeros(self.num_slots, features, dtype=self.dtype, device=self.device)
        self.sides[key] = side
        return True

    # ----- rows ---------------------------------------------------------------------------------------------
    def join(self, slot: int, sites: list[SiteKey]) -> None:
        """The row in KV slot ``slot`` scales ``sites`` from now on (its deltas are written by its adapter)."""
        sites = list(dict.fromkeys(sites))
        for key in sites:
            self.users[key] += 1
        self._rows[slot] = sites

    def write(self, key: SiteKey, slots: torch.Tensor | int, values: torch.Tensor) -> None:
        self.tables[key][slots] = values.to(self.dtype)

    def leave(self, slot: int) -> None:
        """The row in ``slot`` is gone: its deltas are zeroed, so the slot's next owner starts clean."""
        for key in self._rows.pop(slot, ()):
            self.tables[key][slot].zero_()
            self.users[key] -= 1

    # ----- what a step reads ----------------------------------------------------------------------------------
    def active(self) -> dict[SiteKey, torch.Tensor]:
        """{site: (KV slots, features) table} of the sites some running row scales."""
        return {key: self.tables[key] for key, count in self.users.items() if count > 0}

    def decode_views(self, view: tuple[int, int], index: torch.Tensor | None) -> dict[SiteKey, torch.Tensor]:
        """{site: (rows, 1, features)} deltas of a decode step's rows, shaped like a projection's output at one
        position: a slice of the table for a contiguous slot range, else a gather (valid until the rows change)."""
        return {key: (table[view[0]: view[1]] if index is None else table[index]).unsqueeze(1)
                for key, table in self.active().items()}
