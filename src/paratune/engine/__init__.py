"""Multi-tenant serving: one backbone, many PARA / LoRA / (IA)^3 adapters, continuous batching."""

from .adapters import AdapterError
from .engine import Engine, NoFreeSlot
from .request import Request, SamplingParams
from .scoring import PromptScores

__all__ = ["AdapterError", "Engine", "NoFreeSlot", "PromptScores", "Request", "SamplingParams"]
