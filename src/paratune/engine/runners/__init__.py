"""Runners: what computes a step's logits from its ``Batch``. Two implementations of one interface:

* ``HFRunner`` (``hf.py``): the transformers forward with hooks, any architecture;
* ``LlamaRunner`` (``llama.py``): a hand-written step for Llama-family models, with oneDNN-packed weights.

Both answer ``prefill(batch)``, ``decode(batch)``, ``score(batch)`` and ``supports(batch)``; the engine uses the
hand-written one wherever it supports the step and the transformers one otherwise.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..batch import Batch
from .hf import HFRunner
from .llama import LlamaRunner


class Runner(Protocol):
    name: str

    def supports(self, batch: Batch) -> bool: ...

    def prefill(self, batch: Batch) -> torch.Tensor: ...

    def decode(self, batch: Batch) -> torch.Tensor: ...

    def score(self, batch: Batch) -> torch.Tensor: ...


__all__ = ["HFRunner", "LlamaRunner", "Runner"]
