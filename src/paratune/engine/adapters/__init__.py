"""Adapters in the engine: read from PEFT folders (``bank``), one class per kind (``kinds``), their weights in
slot tables (``tables``), the running rows' scaling deltas (``deltas``), and what a step's rows need
(``rows``); ``registry`` holds them together by name."""

from .bank import AdapterError, Backbone
from .deltas import RowDeltas, SiteKey
from .kinds import Adapter, Ia3Adapter, LoraAdapter, ParaAdapter
from .registry import AdapterRegistry
from .rows import DecodeAdapters, PrefillAdapters, StepAdapters
from .tables import LoraTables, ParaTables

__all__ = ["Adapter", "AdapterError", "AdapterRegistry", "Backbone", "DecodeAdapters", "Ia3Adapter", "LoraAdapter",
           "LoraTables", "ParaAdapter", "ParaTables", "PrefillAdapters", "RowDeltas", "SiteKey", "StepAdapters"]
