"""Many PARA adapters' generators of one decoder layer, stacked, evaluated with per-row gathered weights.

This is the serving-side form of ``VectorGenerator``: one batched computation for a batch whose rows use
different adapters (the engine's prefill), instead of one generator call per adapter. Adapters stacked
together share pooling and activation kind; their bottlenecks and targets may differ: smaller ``r`` is
zero-padded (extra units feed zero up-projection columns) and missing targets get zero up-projection rows,
so every row's result equals its own generator's exactly up to float summation order.
"""

from __future__ import annotations

import torch

from .generator import VectorGenerator, pool_prompt
from .rational import rational


class StackedGenerators:
    def __init__(self, generators: list[VectorGenerator], widths: dict[str, int]):
        """``widths``: the layout of the stacked output (every target any of the generators scales)."""
        if not generators:
            raise ValueError("no generators to stack")
        first = generators[0]
        self.pooling = first.pooling
        self.activation = first.activation
        self.widths = dict(widths)
        self.rational = type(first.activation).__name__ == "RationalActivation"
        if any(g.pooling != self.pooling or type(g.activation) is not type(self.activation) for g in generators):
            raise ValueError("stacked generators must share pooling and activation kind")
        r = max(g.down.out_features for g in generators)
        d = first.down.in_features
        n, total = len(generators), sum(self.widths.values())
        device, dtype = first.down.weight.device, first.down.weight.dtype
        self.down_w = torch.zeros(n, r, d, device=device, dtype=dtype)
        self.down_b = torch.zeros(n, r, device=device, dtype=dtype)
        self.up_w = torch.zeros(n, total, r, device=device, dtype=dtype)
        self.query = torch.zeros(n, d, device=device, dtype=dtype) if self.pooling == "attention" else None
        self.numerator = torch.zeros(n, 7, device=device, dtype=dtype) if self.rational else None
        self.denominator = torch.zeros(n, 5, device=device, dtype=dtype) if self.rational else None
        offsets, start = {}, 0
        for target, width in self.widths.items():
            offsets[target] = start
            start += width
        with torch.no_grad():
            for i, g in enumerate(generators):
                gr = g.down.out_features
                self.down_w[i, :gr] = g.down.weight
                self.down_b[i, :gr] = g.down.bias
                row = 0
                for target, width in g.widths.items():
                    self.up_w[i, offsets[target]: offsets[target] + width, :gr] = g.up.weight[row: row + width]
                    row += width
                if self.query is not None:
                    self.query[i] = g.attention_query
                if self.rational:
                    self.numerator[i] = g.activation.numerator
                    self.denominator[i] = g.activation.denominator

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """hidden (B, T, d), mask (B, T), index (B,) into the stack -> {target: delta (B, width)}; the scaling
        vectors are 1 + delta, applied as ``out + out * delta``."""
        hidden = hidden.to(self.down_w.dtype)
        hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)
        if self.pooling == "attention":
            scores = torch.einsum("btd,bd->bt", hidden, self.query[index]) * hidden.shape[-1] ** -0.5
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
            pooled = torch.einsum("bt,btd->bd", torch.softmax(scores, dim=-1), hidden)
        else:
            pooled = pool_prompt(hidden, mask, self.pooling)
        z = torch.einsum("bd,brd->br", pooled, self.down_w[index]) + self.down_b[index]
        if self.rational:
            z = rational(z, self.numerator[index], self.denominator[index])
        else:
            z = self.activation(z)
        out = torch.einsum("br,bwr->bw", z, self.up_w[index])
        return dict(zip(self.widths, out.split(list(self.widths.values()), dim=-1)))

