"""The tensor math every path shares: PARA / (IA)^3 scaling and LoRA's shrink/expand.

One module, used by the PEFT layer (``para/scaling.py``), the engine's transformers-forward hooks and its
hand-written Llama step, so the three cannot drift apart.

A scaling vector l = 1 + delta is applied as ``x + x * delta`` (one fused ``addcmul``, computed in x's dtype and
rounded once), never as ``x * (1 + delta)``: in bf16, 1 + 0.001 rounds to exactly 1 and 1 + 0.005 to 1.0078, so
the adaptation, which lives entirely in delta, would be lost or distorted before it reached the output.
"""

from __future__ import annotations

import torch


def scaled(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x + x * delta`` as a new tensor (``delta`` broadcast to x, cast to x's dtype)."""
    return torch.addcmul(x, x, delta if delta.dtype == x.dtype else delta.to(x.dtype))


def scale_(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x += x * delta`` in place, on a projection's fresh output (nobody else holds it yet)."""
    return x.addcmul_(x, delta if delta.dtype == x.dtype else delta.to(x.dtype))


def scale_segments_(x: torch.Tensor, table: torch.Tensor, segments: list[tuple[int, int, int]]) -> torch.Tensor:
    """A packed prefill row: each scaled prompt's tokens times its own delta row, in place, a view per prompt.
    ``x`` is (tokens, features...) or (1, tokens, features...); ``segments`` are (start, end, table row).
    Gathering a delta row per token instead would write and read (tokens x features) per site, the largest part
    of PARA's prefill overhead."""
    for start, end, row in segments:
        part = x[start:end] if x.dim() == 2 else x[0, start:end]  # (tokens, features...) of one prompt
        scale_(part, table[row].view(part.shape[1:]))
    return x


def lora_rows_(output: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: torch.Tensor,
               rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Decode: LoRA's ``B A x * scaling`` added in place into ``output`` (B, 1, out) for the batch rows ``rows``,
    row i using adapter table slot ``slots[i]`` of ``a`` (slots, r, in), ``b`` (slots, out, r), ``scaling``
    (slots,): one bmm pair over those rows only (vLLM's punica shrink/expand, gathered by slot)."""
    xa = torch.bmm(x[rows].to(a.dtype), a[slots].transpose(1, 2))  # (n, 1, r)
    delta = torch.bmm(xa, b[slots].transpose(1, 2)) * scaling[slots][:, None, None]
    return output.index_add_(0, rows, delta.to(output.dtype))


def lora_segments_(output: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: torch.Tensor,
                   segments: list[tuple[int, int, int]]) -> torch.Tensor:
    """Prefill of a packed row (1, S, ...): LoRA's ``B A x * scaling`` added in place into ``output`` for the
    prompts ``segments`` = [(start, end, table slot)], one matmul pair per prompt (punica's segmented LoRA)."""
    for start, end, slot in segments:
        segment = x[:, start:end].to(a.dtype)
        output[:, start:end] += ((segment @ a[slot].T) @ b[slot].T * scaling[slot]).to(output.dtype)
    return output
