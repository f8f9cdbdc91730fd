"""ParaConfig: the hyper-parameters of one PARA adapter (a PEFT ``PeftConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from peft import PeftConfig
from peft.utils import PeftType

# Canonical order of the targets: it fixes the layout of a generator's output vector.
TARGETS = ("q", "k", "v", "o", "up", "gate", "down")
POOLINGS = ("attention", "mean", "max", "last")
ACTIVATIONS = ("rational", "gelu", "relu", "silu", "identity")
PARA_PEFT_TYPE = "PARA"


@dataclass
class ParaConfig(PeftConfig):
    """Configuration of a PARA (prompt-aware representation adjustment) adapter.

    Every transformed decoder layer gets a vector generator: pool the layer's input hidden states over the
    prompt tokens, project d -> r, apply the activation, project r -> (sum of target widths), and scale the
    targeted projections element-wise by ``1 + output``. The up-projection starts at zero, so a fresh adapter
    leaves the model unchanged.
    """

    r: int = field(default=16, metadata={"help": "Bottleneck width of each layer's vector generator."})
    targets: list[str] = field(
        default_factory=lambda: ["q", "v", "up"],
        metadata={
            "help": "What the vectors scale: q, k, v (attention projection outputs), o (output projection "
            "output), up, gate (FFN projection outputs), down (FFN down-projection input)."
        },
    )
    pooling: str = field(default="attention", metadata={"help": f"Prompt pooling, one of {POOLINGS}."})
    activation: str = field(default="rational", metadata={"help": f"Generator activation, one of {ACTIVATIONS}."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the pooled prompt vector while training."})
    layers_to_transform: Optional[list[int]] = field(
        default=None, metadata={"help": "Decoder layer indices that get a generator (default: all)."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType(PARA_PEFT_TYPE)  # registered by paratune.para.peft on import
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"ParaConfig.r must be a positive integer, got {self.r!r}")
        if isinstance(self.targets, str):
            self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
        targets = list(self.targets or [])
        unknown = [t for t in targets if t not in TARGETS]
        if not targets or unknown:
            raise ValueError(
                f"ParaConfig.targets must be a non-empty subset of {list(TARGETS)}, got {self.targets!r}"
            )
        if len(set(targets)) != len(targets):
            raise ValueError(f"ParaConfig.targets has duplicates: {self.targets!r}")
        self.targets = [t for t in TARGETS if t in targets]
        if self.pooling not in POOLINGS:
            raise ValueError(f"ParaConfig.pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"ParaConfig.activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ParaConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.layers_to_transform is not None:
            if isinstance(self.layers_to_transform, int):
                self.layers_to_transform = [self.layers_to_transform]
            layers = list(self.layers_to_transform)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ValueError(
                    "ParaConfig.layers_to_transform must be None or a non-empty list of layer indices >= 0, "
                    f"got {self.layers_to_transform!r}"
                )
            self.layers_to_transform = sorted(set(layers))
