"""oneDNN-prepacked copies of the decode step's weights on CPU: which matrices, and the call that uses them.

Why: ``F.linear`` on CPU goes to MKL's sgemm (fp32) or to oneDNN with a weight reorder on every call (bf16).
At the few rows of a decode step both leave most of the memory bandwidth unused; a weight reordered once into
oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU backend uses) does not.
What counts is a decode step's access pattern, every matrix of every layer once per step, streamed from memory;
a matrix called again and again from cache says the opposite for small fp32 matrices (1.8-3.0x slower at 1 row)
and misled an earlier plan. Measured on a 2-core Xeon (AMX), SmolLM2-135M's 30 layers in decode order
(docs/performance.md, "Design measurements"), ms per pass over all layers, F.linear -> packed -> packed with
q|k|v and gate|up fused into one matrix each:

- fp32: 1 row 26.7 -> 12.5 -> 11.5, 8 rows 33.6 -> 15.0 -> 13.2, 32 rows 59.4 -> 26.4 -> 24.3;
- bf16: 1 row 14.4 -> 7.5 -> 5.9, 8 rows 16.1 -> 9.1 -> 7.6, 32 rows 23.4 -> 16.2 -> 14.3.

So every projection and the LM head are packed in both precisions, and the hand-written runner
(``runners/llama.py``) packs q|k|v and gate|up as one matrix each (``groups``): one call and one weight stream
instead of three and two; its prefill uses the same copies.

Packed results equal ``F.linear`` up to summation order: identical in bf16 here, ~1e-5 relative in fp32 (tested).
The copies cost memory (``PackedWeights.bytes``: the decoder's weights and the head once more; the transformers
runner still uses the model's own weights), and they are taken when the engine starts: weights changed afterwards (a merge)
need a new engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def packing_plan(dtype: torch.dtype, device: torch.device) -> str | None:
    """"all" (every projection and the head) or None, for a model's dtype and device."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "all"
    return None


# The batch size oneDNN packs for (it picks the blocking by it; any row count runs). Measured: fp32 head
# 32 (1 row 3.08 ms, 8 rows 5.3, 32 rows 10.1) vs 1 (3.7, 8.1, 12.6); bf16 1 is best at every batch size.
_HINT = {torch.float32: 32, torch.bfloat16: 1}


class PackedWeights:
    """{key: packed weight}; ``linear(key, module, x)`` uses the packed copy when there is one."""

    def __init__(self, weights: dict[object, tuple[torch.Tensor, torch.Tensor | None]]):
        """``weights``: {key: (dense weight (out, in), bias or None)}."""
        self.weights, self.biases, self.bytes = {}, {}, 0
        for key, (weight, bias) in weights.items():
            weight = weight.detach().contiguous()
            self.weights[key] = torch.ops.mkldnn._reorder_linear_weight(weight, _HINT[weight.dtype])
            self.biases[key] = None if bias is None else bias.detach()
            self.bytes += weight.numel() * weight.element_size()

    @classmethod
    def build(cls, projections: dict[object, nn.Linear], head: nn.Linear | None, plan: str | None,
              groups: dict[object, list[nn.Linear]] | None = None) -> "PackedWeights":
        """For plan "all": ``head`` (key "lm_head"; None: no head), every projection, and every group of ``groups`` ({key: Linears
        of the same input}) as one matrix, their outputs side by side in the group's order; a projection that is a
        member of a group is not packed again on its own. Nothing for None."""
        if plan is None:
            return cls({})
        groups = groups or {}
        members = {id(m) for group in groups.values() for m in group}
        weights = {} if head is None else {"lm_head": (head.weight, head.bias)}
        weights.update({key: (m.weight, m.bias) for key, m in projections.items() if id(m) not in members})
        for key, group in groups.items():
            weight = torch.cat([m.weight.detach() for m in group])
            biased = any(m.bias is not None for m in group)
            bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                              for m in group]) if biased else None
            weights[key] = (weight, bias)
        return cls(weights)

    def __contains__(self, key) -> bool:
        return key in self.weights

    def linear(self, key, module: nn.Linear | None, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` through the packed copy of ``key`` if there is one (a group's key: the members' outputs
        concatenated), else ``F.linear`` on the module's own weight."""
        weight = self.weights.get(key)
        if weight is None:
            return F.linear(x, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.biases[key], "none", [], "")
