"""``DemoConfig``: every flag of ``paratune demo`` as a validated field, beside the demo it configures.

Apart from ``run.py`` so that the CLI can make the demo's flags without importing the trainer, the engine and the
server that the demo itself needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..models import DEFAULT_MODEL
from ..validation import check, is_int, is_number


@dataclass
class DemoConfig:
    """``paratune demo``: three PARA tenants trained on generated tasks, served, compared with the base model."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local folder or the embedded default"})
    steps: int = field(default=30, metadata={"help": "training steps per tenant"})
    r: int = field(default=16, metadata={"help": "PARA bottleneck width"})
    lr: float = field(default=3e-3, metadata={"help": "learning rate"})
    batch_size: int = field(default=8, metadata={"help": "examples per training step"})
    max_seconds: Optional[float] = field(
        default=None, metadata={"help": "stop a tenant's training after this long (such a tenant is not cached)"})
    n_eval: int = field(default=8, metadata={"help": "held-out prompts per tenant"})
    seed: int = field(default=0, metadata={"help": "seed of the generated tasks and of training"})

    def __post_init__(self):
        check("model", self.model, isinstance(self.model, str) and bool(self.model.strip()),
              "a model name, folder or hub id")
        for name in ("steps", "r", "batch_size", "n_eval"):
            check(name, getattr(self, name), is_int(getattr(self, name), 1), "a positive integer")
        check("lr", self.lr, is_number(self.lr, 0), "a positive number")
        check("max_seconds", self.max_seconds, self.max_seconds is None or is_number(self.max_seconds, 0),
              "a positive number of seconds or None")
        check("seed", self.seed, is_int(self.seed, 0), "an integer >= 0")
