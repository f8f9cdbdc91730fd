"""Adapter tables (vLLM ``lora/`` layout): every loaded adapter's weights live in one slot of persistent,
per-module tensors in the model's dtype; a batch carries only per-row slot indices.

* ``LoraTables``: per LoRA-targeted module, A (slots, r_max, in) and B (slots, out, r_max) plus a scaling per
  slot. A smaller rank is zero-padded (exactly no contribution). Loading writes a slot, unloading frees it.
* ``ParaTables``: per decoder layer, the generators of every loaded PARA adapter stacked: RMS-normalised
  prompt -> pooling query -> down (slots, r_max, d) + bias -> activation (per-slot rational coefficients) ->
  up, one table per target (slots, width, r_max). ``vectors`` computes the deltas of many prompts, each with
  its own adapter, in one batched computation per layer.
(The per-row deltas that PARA and (IA)^3 rows apply are not adapter weights: ``deltas.RowDeltas`` owns them.)

Tables grow by doubling (one copy per doubling, not per request) and never copy weights per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...para.config import TARGETS
from ...para.generator import VectorGenerator
from ...para.rational import rational

POOLINGS = ("attention", "mean", "max", "last")


def _grow(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``t`` zero-padded along ``dim`` to at least ``size`` (doubling), or ``t`` itself when large enough."""
    if t.shape[dim] >= size:
        return t
    shape = list(t.shape)
    shape[dim] = max(size, 2 * shape[dim])
    grown = t.new_zeros(shape)
    grown.narrow(dim, 0, t.shape[dim]).copy_(t)
    return grown


@dataclass(frozen=True)
class ParaLayer:
    """One decoder layer's generator of a PARA adapter as plain tensors (the host form the store caches: a few
    tensors per layer instead of an ``nn.Module`` tree, so thousands of cached adapters cost the garbage collector
    nothing). ``up`` rows are laid out in the order of ``widths``."""
    down_w: torch.Tensor  # (r, d)
    down_b: torch.Tensor  # (r,)
    query: torch.Tensor | None  # (d,) attention pooling only
    numerator: torch.Tensor | None  # (7,) rational activation only
    denominator: torch.Tensor | None  # (5,)
    up: torch.Tensor  # (sum(widths), r)
    widths: dict[str, int]

    @classmethod
    def of(cls, g: VectorGenerator) -> "ParaLayer":
        rational_kind = type(g.activation).__name__ == "RationalActivation"
        return cls(g.down.weight.detach(), g.down.bias.detach(),
                   g.attention_query.detach() if g.attention_query is not None else None,
                   g.activation.numerator.detach() if rational_kind else None,
                   g.activation.denominator.detach() if rational_kind else None, g.up.weight.detach(),
                   dict(g.widths))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.down_w, self.down_b, self.query, self.numerator,
                                                          self.denominator, self.up) if t is not None)


class SlotAllocator:
    def __init__(self):
        self.free: list[int] = []
        self.size = 0
        self.owner: dict[str, int] = {}

    def take(self, name: str) -> int:
        slot = min(self.free) if self.free else self.size
        if self.free:
            self.free.remove(slot)
        else:
            self.size += 1
        self.owner[name] = slot
        return slot

    def release(self, name: str) -> int | None:
        slot = self.owner.pop(name, None)
        if slot is not None:
            self.free.append(slot)
        return slot


class LoraTables:
    def __init__(self, dtype: torch.dtype, device):
        self.dtype, self.device = dtype, device
        self.slots = SlotAllocator()
        self.a: dict[str, torch.Tensor] = {}  # module path -> (slots, r_max, in)
        self.b: dict[str, torch.Tensor] = {}  # module path -> (slots, out, r_max)
        self.scaling = torch.zeros(0, dtype=dtype, device=device)
        self.modules_of: dict[str, set[str]] = {}  # adapter -> modules it adapts

    def add(self, name: str, scaling: float, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> int:
        slot = self.slots.take(name)
        self.scaling = _grow(self.scaling, 0, slot + 1)
        self.scaling[slot] = scaling
        for path, (a, b) in weights.items():
            r, n_in = a.shape
            if path not in self.a:
                self.a[path] = torch.zeros(slot + 1, r, n_in, dtype=self.dtype, device=self.device)
                self.b[path] = torch.zeros(slot + 1, b.shape[0], r, dtype=self.dtype, device=self.device)
            self.a[path] = _grow(_grow(self.a[path], 0, slot + 1), 1, r)
            self.b[path] = _grow(_grow(self.b[path], 0, slot + 1), 2, r)
            self.a[path][slot].zero_()
            self.b[path][slot].zero_()
            self.a[path][slot, :r] = a.to(self.dtype)
            self.b[path][slot, :, :r] = b.to(self.dtype)
        self.modules_of[name] = set(weights)
        return slot

    def remove(self, name: str) -> None:
        slot = self.slots.release(name)
        for path in self.modules_of.pop(name, ()):
            self.a[path][slot].zero_()  # a freed slot contributes nothing, whoever reads it
            self.b[path][slot].zero_()


class ParaTables:
    """The generators of every loaded PARA adapter, stacked per decoder layer."""

    def __init__(self, n_layers: int, hidden: int, dtype: torch.dtype, device):
        self.n_layers, self.hidden, self.dtype, self.device = n_layers, hidden, dtype, device
        self.slots = SlotAllocator()
        self.pooling: dict[int, str] = {}  # slot -> pooling
        self.activation: dict[int, object] = {}  # slot -> "rational" or the fixed activation module
        self.layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
        self.targets: list[set[str]] = [set() for _ in range(n_layers)]

    def add(self, name: str, layers: dict[int, ParaLayer], pooling: str, activation) -> int:
        """Write an adapter's layers into a free slot; ``activation``: "rational" or the fixed activation module."""
        slot = self.slots.take(name)
        self.pooling[slot] = pooling
        self.activation[slot] = activation
        for index in range(self.n_layers):
            self._write(index, slot, layers.get(index))
        return slot

    def remove(self, name: str) -> None:
        slot = self.slots.release(name)
        if slot is not None:
            for index in range(self.n_layers):
                self._write(index, slot, None)
            self.pooling.pop(slot, None)
            self.activation.pop(slot, None)

    def _write(self, index: int, slot: int, g: ParaLayer | None) -> None:
        t = self.layers[index]
        d = self.hidden
        r = g.down_w.shape[0] if g is not None else 1
        specs = {"down_w": (1, r, d), "down_b": (1, r), "query": (1, d), "numerator": (1, 7), "denominator": (1, 5)}
        for key, shape in specs.items():
            if key not in t:
                t[key] = torch.zeros(slot + 1, *shape[1:], dtype=self.dtype, device=self.device)
            t[key] = _grow(t[key], 0, slot + 1)
            if key in ("down_w", "down_b"):
                t[key] = _grow(t[key], 1, r)
            t[key][slot].zero_()
        for target in self.targets[index]:  # every up table as wide as down: a larger r may arrive at any time
            t[f"up_{target}"] = _grow(_grow(t[f"up_{target}"], 0, slot + 1), 2, t["down_w"].shape[1])
            t[f"up_{target}"][slot].zero_()
        if g is None:  # zero weights: delta exactly 0 at this layer
            return
        with torch.no_grad():
            t["down_w"][slot, :r] = g.down_w
            t["down_b"][slot, :r] = g.down_b
            if g.query is not None:
                t["query"][slot] = g.query
            if g.numerator is not None:
                t["numerator"][slot] = g.numerator
                t["denominator"][slot] = g.denominator
            row = 0
            for target, width in g.widths.items():
                key = f"up_{target}"
                if key not in t:
                    t[key] = torch.zeros(t["down_w"].shape[0], width, t["down_w"].shape[1], dtype=self.dtype,
                                         device=self.device)
                    self.targets[index].add(target)
                t[key] = _grow(_grow(t[key], 0, slot + 1), 2, t["down_w"].shape[1])
                t["down_w"] = _grow(t["down_w"], 1, t[key].shape[2])
                t["down_b"] = _grow(t["down_b"], 1, t[key].shape[2])
                t[key][slot, :, :r] = g.up[row: row + width]
                row += width

    def vectors(self, index: int, hidden: torch.Tensor, segments: torch.Tensor, slots: list[int]
                ) -> dict[str, torch.Tensor]:
        """Deltas of one layer for n prompts packed in ``hidden`` (S, d): token t belongs to prompt
        ``segments[t]`` (0..n-1), prompt i uses adapter slot ``slots[i]``. Returns {target: (n, width)}.

        Same computation as ``VectorGenerator`` (RMS-normalise each token, pool, down, activation, up) with
        segment reductions instead of a padded batch, so no prompt is padded to another's length."""
        t = self.layers[index]
        n = len(slots)
        x = hidden.to(self.dtype)
        # RMS normalisation as one factor per token, folded into the pooling weights below: no normalised copy
        # of the (tokens, d) hidden states is made (that copy and its products were most of the generator's
        # prefill cost).
        norm = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1).square() / x.shape[-1] + 1e-6)
        slot_index = torch.tensor(slots, device=x.device)
        pooled = x.new_zeros(n, x.shape[-1])
        for pooling in dict.fromkeys(self.pooling[s] for s in slots):
            members = [i for i, s in enumerate(slots) if self.pooling[s] == pooling]
            pooled[members] = self._pool(pooling, x, norm, segments, n, t["query"][slot_index])[members]
        z = torch.einsum("nd,nrd->nr", pooled, t["down_w"][slot_index]) + t["down_b"][slot_index]
        z = self._activate(z, slots, slot_index, t)
        return {target: torch.einsum("nr,nwr->nw", z, t[f"up_{target}"][slot_index]) for target in self._order(index)}

    def _order(self, index: int) -> list[str]:
        return [target for target in TARGETS if target in self.targets[index]]

    @staticmethod
    def _pool(pooling: str, x: torch.Tensor, norm: torch.Tensor, segments: torch.Tensor, n: int,
              query: torch.Tensor) -> torch.Tensor:
        """(n, d) pooled normalised states (x * norm per token) of each prompt. Attention and mean pooling are
        one (n, tokens) @ (tokens, d) product with the normalisation folded into the weights."""
        d = x.shape[-1]
        tokens = torch.arange(len(segments), device=x.device)
        if pooling in ("attention", "mean"):
            if pooling == "attention":  # softmax over each prompt of (x_t * norm_t) . query / sqrt(d)
                scores = (x @ query.T).gather(1, segments[:, None])[:, 0] * norm * d ** -0.5
                top = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
                top = top.scatter_reduce(0, segments, scores, "amax")
                weights = torch.exp(scores - top[segments])
            else:
                weights = torch.ones_like(norm)
            total = x.new_zeros(n).index_add_(0, segments, weights)
            matrix = x.new_zeros(n, len(segments))
            matrix[segments, tokens] = weights / total[segments] * norm
            return matrix @ x
        if pooling == "max":
            out = torch.full((n, d), float("-inf"), dtype=x.dtype, device=x.device)
            return out.scatter_reduce(0, segments[:, None].expand_as(x), x * norm[:, None], "amax")
        if pooling == "last":
            last = torch.zeros(n, dtype=torch.long, device=x.device).scatter_reduce(0, segments, tokens, "amax")
            return x[last] * norm[last, None]
        raise ValueError(f"unknown pooling {pooling!r}")

    def _activate(self, z: torch.Tensor, slots: list[int], slot_index: torch.Tensor, t) -> torch.Tensor:
        kinds = [self.activation[s] for s in slots]
        if all(k == "rational" for k in kinds):
            return rational(z, t["numerator"][slot_index], t["denominator"][slot_index])
        out = torch.empty_like(z)
        for kind in {id(k): k for k in kinds}.values():
            members = [i for i, k in enumerate(kinds) if k is kind]
            if kind == "rational":
                out[members] = rational(z[members], t["numerator"][slot_index[members]],
                                        t["denominator"][slot_index[members]])
            else:
                out[members] = kind(z[members])
        return out
