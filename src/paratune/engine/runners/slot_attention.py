"""The attention of a model run by the transformers runner, registered with transformers' ``AttentionInterface``:
the model's own implementation (eager or SDPA) applied per packed prompt at prefill, and over the KV cache view
at decode. The step's ``Batch`` arrives as the ``paratune_batch`` keyword the runner gives the model's forward
(transformers passes a forward's extra keywords down to the attention function)."""

from __future__ import annotations

import sys

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..kv_cache import causal_mask, over_view_rows

ATTENTION_NAME = "paratune_slots"


def slot_attention(module, query, key, value, attention_mask, paratune_batch=None, **kwargs):
    batch = paratune_batch
    name = module._paratune_inner_attention
    inner = module._paratune_eager if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]
    if batch is None:  # a forward outside the engine's steps (e.g. the KV-shape probe): the model's own attention
        return inner(module, query, key, value, attention_mask, **kwargs)
    if batch.kind == "prefill":
        outputs = []
        for start, end in batch.segments:
            mask = _cached_causal(module, end - start, query.dtype, query.device)
            out, _ = inner(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], mask,
                           **kwargs)
            outputs.append(out)
        return torch.cat(outputs, dim=1), None  # (1, S, heads, head_dim)
    return over_view_rows(batch, query, key.shape[0],
                          lambda q: inner(module, q, key, value, attention_mask, **kwargs)[0]), None


def use_slot_attention(model) -> None:
    """Route the model's attention through ``slot_attention``, which wraps the model's own implementation."""
    inner = model.config._attn_implementation or "eager"
    if inner == ATTENTION_NAME:  # a second engine on the same model: keep the original implementation
        inner = getattr(model, "_paratune_inner_attention")
    model._paratune_inner_attention = inner
    for module in model.modules():
        if hasattr(module, "layer_idx") and any(n in type(module).__name__ for n in ("Attention", "Attn")):
            module._paratune_inner_attention = inner
            module._paratune_eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config._attn_implementation = ATTENTION_NAME


def _cached_causal(module, length: int, dtype, device) -> torch.Tensor:
    masks = module.__dict__.setdefault("_paratune_causal", {})
    if (length, dtype) not in masks:
        masks.clear() if len(masks) > 64 else None
        masks[(length, dtype)] = causal_mask(length, dtype, device)
    return masks[(length, dtype)]


AttentionInterface.register(ATTENTION_NAME, slot_attention)
