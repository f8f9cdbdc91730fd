"""A projection site: where one PARA target's features lie in one module of a decoder layer.

Kept apart from ``arch`` (which finds the sites of each architecture) so that the scaling code can place a delta
by a site without importing the discovery logic, and the discovery can check the scaling code without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedModelError(ValueError):
    pass


@dataclass(frozen=True)
class Site:
    module: str  # path of the projection inside the decoder layer
    side: str  # "output": scale the module's output; "input": scale its first input
    start: int  # offset of this target inside the last dimension (fused projections)
    width: int
    # Total scaled features of the module's tensor (its last dims flattened: a per-head q_norm's output is
    # (B, T, heads, head_dim)); None: read from the module (``module_features``).
    features: int | None = None
    # Interleaved layouts only: the target is width // block blocks of ``block`` features, repeating every
    # ``stride`` features from ``start``. None: the contiguous slice [start, start + width).
    block: int | None = None
    stride: int | None = None

    def indices(self) -> torch.Tensor:
        """Positions of this target's features in the module's (flattened) last dimension, in vector order."""
        if self.block is None:
            return torch.arange(self.start, self.start + self.width)
        blocks = torch.arange(self.width // self.block) * self.stride + self.start
        return (blocks[:, None] + torch.arange(self.block)).reshape(-1)


def place_delta(site: Site, delta: torch.Tensor, features: int, previous: torch.Tensor | None = None) -> torch.Tensor:
    """A target's delta (B, width) -> the delta of its whole module (B, features): the target's positions get
    ``delta``, the others keep ``previous`` (another target of the same fused module) or 0. This is the layout
    contract ``scaling.module_scales`` must follow; it covers contiguous and interleaved sites alike."""
    full = delta.new_zeros(delta.shape[0], features) if previous is None else previous.to(delta.dtype).clone()
    full[:, site.indices().to(delta.device)] = delta
    return full


def module_features(module: nn.Module, side: str) -> int:
    if hasattr(module, "in_features"):  # nn.Linear
        return module.out_features if side == "output" else module.in_features
    if hasattr(module, "nf"):  # transformers' Conv1D (GPT-2): weight is (in, out)
        return module.nf if side == "output" else module.weight.shape[0]
    raise UnsupportedModelError(f"cannot read the width of {type(module).__name__}")
