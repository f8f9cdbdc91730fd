"""The vector generator of one PARA adapter in one decoder layer: pool -> down -> activation -> up."""

from __future__ import annotations

import torch
from torch import nn

from .rational import RationalActivation

# Bumped whenever the same saved weights would compute different vectors (caches key on it, e.g. the demo's):
# 2 = attention-pooling scores scaled by 1/sqrt(d), rational bounded outside [-40, 40].
GENERATOR_VERSION = 2

_FIXED_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "identity": nn.Identity}


def fixed_activation(name: str) -> nn.Module:
    """The non-learnable activation ``name`` (gelu, relu, silu, identity)."""
    return _FIXED_ACTIVATIONS[name]()


def pool_prompt(
    hidden: torch.Tensor, mask: torch.Tensor, pooling: str, attention_query: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool hidden states (B, T, d) over the positions where ``mask`` (B, T) is True; returns (B, d)."""
    mask = mask.to(torch.bool)
    if pooling == "attention":
        # Scaled like dot-product attention: unscaled h . w has a spread that grows with sqrt(d) (the tokens are
        # RMS-normalised, so |h| = sqrt(d)), and on wide models one optimiser step collapsed pooling onto one token.
        scores = (hidden @ attention_query) * hidden.shape[-1] ** -0.5  # (B, T)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("bt,btd->bd", weights, hidden)
    if pooling == "mean":
        weights = mask.to(hidden.dtype)
        return torch.einsum("bt,btd->bd", weights, hidden) / weights.sum(-1, keepdim=True)
    if pooling == "max":
        return hidden.masked_fill(~mask[..., None], float("-inf")).amax(dim=1)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, positions, -1).amax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {pooling!r}")


class VectorGenerator(nn.Module):
    """Maps a prompt's hidden states entering one layer to the deltas of that layer's scaling vectors:
    RMS-normalise each token, pool over the prompt, dropout, down (d -> r), activation, up (r -> widths).

    The scaling vectors are ``1 + forward(...)``, applied as ``out + out * delta`` so low-precision models keep
    small deltas; ``up`` starts at zero so a new adapter is the identity.
    The output of width sum(widths) is laid out in the order of ``widths`` (the canonical target order).
    """

    def __init__(
        self, hidden_size: int, r: int, widths: dict[str, int], pooling: str, activation: str, dropout: float
    ):
        super().__init__()
        self.pooling = pooling
        self.widths = dict(widths)
        if pooling == "attention":
            # Zero query: uniform softmax at init, i.e. attention pooling starts as mean pooling.
            self.attention_query = nn.Parameter(torch.zeros(hidden_size))
        else:
            self.register_parameter("attention_query", None)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.down = nn.Linear(hidden_size, r)
        self.activation = RationalActivation() if activation == "rational" else _FIXED_ACTIVATIONS[activation]()
        self.up = nn.Linear(r, sum(self.widths.values()), bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden (B, T, d), mask (B, T) bool -> {target: delta (B, width)}.

        Every row needs at least one prompt token; ``ParaModel`` checks that once per forward (a check here
        would cost one host sync per layer)."""
        hidden = hidden.to(self.down.weight.dtype)
        # Per-token RMS normalisation (no parameters): residual streams of real models carry "massive
        # activations" (SmolLM2-135M: single tokens reach norm 24,000, pooled norms range 1 to 2,000 across
        # layers), which made the generator diverge within a few steps when fed raw.
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)
        pooled = pool_prompt(hidden, mask, self.pooling, self.attention_query)
        out = self.up(self.activation(self.down(self.dropout(pooled))))
        return dict(zip(self.widths, out.split(list(self.widths.values()), dim=-1)))
