"""Multi-tenant serving: one backbone, many PARA / LoRA / (IA)^3 adapters, continuous batching."""

from .adapters import AdapterCacheFull, AdapterError
from .engine import Engine, NoFreeSlot
from .request import Request, SamplingParams
from .scoring import PromptScores

__all__ = ["AdapterCacheFull", "AdapterError", "Engine", "NoFreeSlot", "PromptScores", "Request", "SamplingParams"]
