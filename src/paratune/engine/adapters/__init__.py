"""Adapters in the engine, in tiers: which exist (``catalog``: an adapter folder, names added at runtime), the host
cache that loads them on demand and evicts the least recently used (``store``), and the device slot tables they
are installed into for the rows that need them (``registry``, over ``tables``). Read from PEFT folders
(``bank``), one class per kind (``kinds``), the running rows' scaling deltas (``deltas``), and what a step's rows
need (``rows``)."""

from .bank import AdapterError, Backbone
from .catalog import AdapterCatalog
from .deltas import RowDeltas, SiteKey
from .kinds import Adapter, Ia3Adapter, LoraAdapter, ParaAdapter
from .registry import AdapterRegistry
from .rows import DecodeAdapters, PrefillAdapters, StepAdapters
from .store import AdapterCacheFull, AdapterStore
from .tables import LoraTables, ParaLayer, ParaTables

__all__ = ["Adapter", "AdapterCacheFull", "AdapterCatalog", "AdapterError", "AdapterRegistry", "AdapterStore",
           "Backbone", "DecodeAdapters", "Ia3Adapter", "LoraAdapter", "LoraTables", "ParaAdapter", "ParaLayer",
           "ParaTables", "PrefillAdapters", "RowDeltas", "SiteKey", "StepAdapters"]
