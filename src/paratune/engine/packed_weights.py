"""oneDNN-prepacked copies of the decode step's weights on CPU: which matrices, and the call that uses them.

Why: ``F.linear`` on CPU goes to MKL's sgemm (fp32) or to oneDNN with a weight reorder on every call (bf16).
At the few rows of a decode step both leave speed on the table; a weight reordered once into oneDNN's blocked
layout (``torch.ops.mkldnn._reorder_linear_weight``, what inductor's CPU backend uses) does not. Measured on
this 2-core Xeon (AMX), SmolLM2-135M shapes (``python -m paratune.bench.packed_check``,
docs/results/packed/packed_check.md):

- fp32 LM head (49152 x 576): 8 rows 13.7 -> 6.0 ms, 32 rows 13.8 -> 11.3 ms, 1 row 4.1 -> 3.6 ms; the decoder's
  own fp32 matrices lose at 1 row (1.8-3.0x slower) and gain at most 17% at 32, so fp32 packs only the head;
- bf16, every matrix, 0.45-0.84x the time at 1-32 rows (576 x 1536 at 8 rows 96 -> 48 us, the head 3.0 -> 1.4
  ms at 8 rows): the unpacked bf16 call reorders the weight on every call.
Decode steps of the engine, packed / unpacked tokens/s (``packed_check engine 1,8,32 float32`` / ``bfloat16``,
two runs on a noisy host): fp32 0.96-1.00 at batch 1, 1.10-1.18 at 8, 0.99-1.05 at 32; bf16 1.22-1.33 at 1,
1.10-1.22 at 8, 1.01-1.14 at 32.

Packed results equal ``F.linear`` up to summation order: identical in bf16 here, ~1e-5 relative in fp32 (tested).
The copies cost memory (the head: vocab x hidden; bf16 "all": the decoder's weights once more), and they are
taken when the engine starts: weights changed afterwards (a merge) need a new engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def packing_plan(dtype: torch.dtype, device: torch.device) -> str | None:
    """"all" (every projection and the head), "head" (the LM head only) or None, for a model's dtype and device."""
    if torch.device(device).type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "all"
    if dtype == torch.float32:
        return "head"
    return None


# The batch size oneDNN packs for (it picks the blocking by it; any row count runs). Measured: fp32 head
# 32 (1 row 3.08 ms, 8 rows 5.3, 32 rows 10.1) vs 1 (3.7, 8.1, 12.6); bf16 1 is best at every batch size.
_HINT = {torch.float32: 32, torch.bfloat16: 1}


class PackedWeights:
    """{key: packed weight}; ``linear(key, module, x)`` uses the packed copy when there is one."""

    def __init__(self, modules: dict[object, nn.Linear]):
        self.weights, self.biases = {}, {}
        for key, module in modules.items():
            weight = module.weight.detach()
            self.weights[key] = torch.ops.mkldnn._reorder_linear_weight(weight, _HINT[weight.dtype])
            self.biases[key] = None if module.bias is None else module.bias.detach()

    @classmethod
    def build(cls, projections: dict[object, nn.Linear], head: nn.Linear, plan: str | None) -> "PackedWeights":
        """Pack ``head`` (key "lm_head") for plan "head", also every projection for "all"; nothing for None."""
        modules = {} if plan is None else {"lm_head": head}
        if plan == "all":
            modules.update(projections)
        return cls(modules)

    def __contains__(self, key) -> bool:
        return key in self.weights

    def linear(self, key, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight = self.weights.get(key)
        if weight is None:
            return F.linear(x, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(x, weight, self.biases[key], "none", [], "")
