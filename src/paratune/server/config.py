"""What an operator sets for the HTTP server (limits, key, adapter root); the engine's own settings live apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServerConfig:
    model_name: str  # the base model's name in ``model``; every other name is an adapter
    api_key: str | None = None  # every /v1/ route needs it as a Bearer token when set
    queue_size: int = 256  # requests that may wait beyond the batch's slots before new ones get 429
    max_prompt_tokens: int = 2048
    max_completion_tokens: int = 1024
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    adapter_root: Path | None = None  # runtime loading (POST /v1/adapters) only from inside it; None disables it
