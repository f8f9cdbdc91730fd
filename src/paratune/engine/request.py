"""A generation request and its sampling parameters."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

_ids = itertools.count()


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    ignore_eos: bool = False

    def __post_init__(self):
        checks = [
            ("max_tokens", isinstance(self.max_tokens, int) and self.max_tokens >= 1, "an integer >= 1"),
            ("temperature", isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 2, "in [0, 2]"),
            ("top_p", isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "an integer >= 0"),
            ("stop", isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
             "a list of non-empty strings"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")


@dataclass(eq=False)  # identity: two requests with the same fields are still two requests
class Request:
    prompt_ids: list[int]
    adapter: str | None = None  # None = the base model
    params: SamplingParams = field(default_factory=SamplingParams)
    id: int = field(default_factory=lambda: next(_ids))
    tenant: str | None = None  # who it is charged to under fair scheduling (default: its adapter)
    # filled in while it runs
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "length" | "stop" | "eos" | "cancelled" | "error"
    error: str | None = None  # why, when finish_reason is "error" and the engine knows (its adapter failed to load)
    adapter_held: bool = False  # holds its adapter in the store (until it no longer needs the weights)
    generator: torch.Generator | None = None  # seeded requests: on the engine's device
    detokenizer: object = field(default=None, repr=False)  # engine.detokenize.Detokenizer, set by the engine

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def reserved_tokens(self) -> int:
        """KV-cache tokens this request may need: its prompt plus every token it may generate."""
        return len(self.prompt_ids) + self.params.max_tokens
