"""Multi-tenant serving: one backbone, many PARA / LoRA / (IA)^3 adapters, continuous batching."""

from .adapter_bank import AdapterBank, AdapterError
from .engine import Engine
from .request import Request, SamplingParams

__all__ = ["AdapterBank", "AdapterError", "Engine", "Request", "SamplingParams"]
