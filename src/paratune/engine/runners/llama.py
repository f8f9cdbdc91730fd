"""The hand-written runner for Llama-family models (Llama, Mistral, Qwen2; SmolLM2 is a Llama), gpt-fast style:
prefill, decode and scoring as plain functions over the model's own modules and weights.

Why: transformers' module machinery costs ~12 ms per decode step of SmolLM2-135M at batch 1 on a 2-core CPU,
and a step written by hand is also where the weights can be oneDNN-packed (``packed_weights``: every matrix,
q|k|v and gate|up fused into one each), which roughly halves the matmul time of both decode (weights streamed
from memory) and fp32 prefill (MKL's sgemm is slow on such CPUs). It runs on the engine's own state: the slot KV
cache (``SlotKVCache.update`` with the step's batch), the model's attention implementation (SDPA called on the
KV heads directly, else ``slot_attention``; per packed prompt at prefill), and the step's adapters
(``batch.adapters``: the same ``scale_input`` / ``scale_output_`` / ``lora_`` calls as the transformers runner's
hooks, inline, no Python hook per projection); at prefill it lets the adapters compute PARA's vectors before
each layer, as the transformers runner's layer pre-hooks do.

Every module it calls is the model's own (embedding, rotary embedding, activation, head) or the weights of its
Linears (through ``F.linear`` or the packed copies), in the order transformers runs them; where fewer ops compute
the same arithmetic it uses them instead, for the known Llama/Mistral/Qwen2 classes only (RMSNorm as
``F.rms_norm`` in fp32, RoPE once over q|k). Its logits equal the transformers forward (tested to 1e-5 in fp32
eager and SDPA, 1e-2 in bf16, greedy outputs token-exact, prefill and decode).
Anything it does not know (another architecture, a scaled site or LoRA module outside q/k/v/o/gate/up/down,
accelerate hooks) makes ``LlamaRunner.build`` return None or ``supports(batch)`` False, and the engine runs that
step through the transformers runner instead.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from ...para.arch import decoder_layers
from ..batch import Batch
from ..kv_cache import SlotKVCache, over_view_rows
from .packed_weights import PackedWeights, packing_plan
from .slot_attention import slot_attention

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Projections of the same input that a packed step runs as one matrix (one call, one weight stream).
GROUPS = {"self_attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "mlp.gate_up": ("mlp.gate_proj", "mlp.up_proj")}
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")  # weight * x * rsqrt(mean(x^2) + eps)
GROUPED_DECODE_ROWS = 32  # from this many decode rows on, fp32 attention as two matmuls (``_decode_attention``)


class LlamaRunner:
    name = "llama"

    def __init__(self, model: nn.Module, cache: SlotKVCache, packed: bool = True):
        self.model, self.cache = model, cache
        prefix, self.layers = decoder_layers(model)
        base = model.get_submodule(prefix.rsplit(".", 1)[0]) if "." in prefix else model
        self.embed, self.norm, self.rotary = base.embed_tokens, base.norm, base.rotary_emb
        self.lm_head = model.lm_head
        self.rope = sys.modules[type(self.layers[0]).__module__].apply_rotary_pos_emb
        self.paths = {(i, name): f"{prefix}.{i}.{name}" for i in range(len(self.layers)) for name in PROJECTIONS}
        self.known_lora = set(self.paths.values())
        self.head_dim = self.layers[0].self_attn.head_dim
        weight = model.lm_head.weight
        self.packing = packing_plan(weight.dtype, weight.device) if packed else None
        self.packed = PackedWeights.build(
            {(i, name): layer.get_submodule(name) for i, layer in enumerate(self.layers) for name in PROJECTIONS},
            model.lm_head, self.packing,
            groups={(i, group): [layer.get_submodule(m) for m in members]
                    for i, layer in enumerate(self.layers) for group, members in GROUPS.items()})
        # The model's SDPA called directly on the un-repeated key/value heads (``enable_gqa``): transformers'
        # SDPA wrapper repeats K/V to every query head whenever it is given a mask (on CPU). Measured per layer
        # call (fp32, SmolLM2's 9 query / 3 KV heads): decode 0.47-0.78x the
        # wrapper's time at 1-64 rows, prefill (per prompt, ``is_causal``) 0.70x at 64 tokens, 0.94x at 512; in
        # bf16 the prefill 0.72-0.84x, but the bf16 decode 2.5-4.7x slower (another kernel): it keeps the wrapper.
        attention = getattr(self.layers[0].self_attn, "_paratune_inner_attention", None)
        self.direct_sdpa = attention == "sdpa" and weight.device.type == "cpu"
        self.direct_decode = self.direct_sdpa and weight.dtype == torch.float32
        # Fewer, larger ops where the model's own modules compute exactly this (a decode step at batch 1 is ~1,400
        # small ops, a quarter of its time): RMSNorm as one F.rms_norm (weight * x / rms, the Llama/Mistral/Qwen2
        # norm; in fp32 only, where both are the same arithmetic) and RoPE once over q and k together, with
        # rotate_half(x) * sin = roll(x) * (sin with its first half negated) (4 ops for both instead of 14).
        norms = [self.norm] + [n for layer in self.layers for n in (layer.input_layernorm,
                                                                   layer.post_attention_layernorm)]
        self.fused_norm = weight.dtype == torch.float32 and all(
            type(n).__name__ in RMS_NORMS and type(n).forward.__qualname__.endswith("RMSNorm.forward")
            and isinstance(getattr(n, "variance_epsilon", None), float) for n in norms)
        self.fused_rope = self.rope.__module__ in {f"transformers.models.{m}.modeling_{m}"
                                                   for m in SUPPORTED_MODEL_TYPES}
        # output widths of each group's members, to split the group's output into views
        self.widths = {group: [self.layers[0].get_submodule(m).out_features for m in members]
                       for group, members in GROUPS.items()}

    @classmethod
    def build(cls, model: nn.Module, cache: SlotKVCache, packed: bool = True) -> "LlamaRunner | None":
        """The fast step for ``model``, or None when it is not a plain Llama-family decoder. ``packed``: use
        oneDNN-prepacked weights where they pay on this device and dtype (``packed_weights``)."""
        config = model.config
        if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
            return None
        if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) != 1:
            return None
        if any(hasattr(m, "_hf_hook") for m in model.modules()):  # accelerate offloading / device hooks
            return None
        try:
            for layer in decoder_layers(model)[1]:
                names = {n for n, _ in layer.named_modules()}
                if not set(PROJECTIONS) <= names or {"self_attn.q_norm", "self_attn.k_norm"} & names:
                    return None
            fast = cls(model, cache, packed=packed)
        except (AttributeError, ValueError):
            return None
        return fast

    def supports(self, batch: Batch) -> bool:
        """Whether every site and LoRA module the step's rows adapt is one of the projections it knows."""
        adapters = batch.adapters
        return (all(key[1] in PROJECTIONS for key in adapters.sites())
                and all(path in self.known_lora for path in adapters.lora_paths()))

    def decode(self, batch: Batch) -> torch.Tensor:
        """(rows, vocab) logits of one decode step."""
        x = self.embed(batch.input_ids[:, None])
        cos, sin = self.rotary(x, batch.positions[:, None])
        x = self._layers(x, cos, sin, batch)
        return self.packed.linear("lm_head", self.lm_head, self._norm(self.norm, x)[:, -1])

    def prefill(self, batch: Batch) -> torch.Tensor:
        """(prompts, vocab) logits at each packed prompt's last token (every position when ``batch.last`` is
        None), writing the prompts' KV unless the batch says not to. Why here too: on CPU the packed weights
        multiply a prefill's many rows 2.2-2.5x faster than MKL's fp32 GEMM (576 x 3072 at 2048 rows: 54 -> 22 ms;
        bf16 the same either way)."""
        x = self.embed(batch.input_ids[None])
        cos, sin = self.rotary(x, batch.positions[None])
        x = self._layers(x, cos, sin, batch, before_layer=batch.adapters.before_layer)
        x = x[0] if batch.last is None else x[0, batch.last]
        return self.packed.linear("lm_head", self.lm_head, self._norm(self.norm, x))

    def score(self, batch: Batch) -> torch.Tensor:
        """(positions, vocab) logits of every position of one prompt; no KV written."""
        return self.prefill(batch)

    def _layers(self, x: torch.Tensor, cos, sin, batch: Batch, before_layer=None):
        """The decoder layers over x (B, T, d): the model's modules and weights in transformers' order, each
        projection adapted by the step's adapters."""
        rows, length = x.shape[:2]
        joint = None
        if self.fused_rope and cos.shape[-1] == self.head_dim:  # (B, T, 1, D): one cos/sin for every head
            half = self.head_dim // 2
            joint = cos[:, :, None], torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, :, None]
        for i, layer in enumerate(self.layers):
            if before_layer is not None:
                before_layer(i, x)
            attn, mlp = layer.self_attn, layer.mlp
            h = self._norm(layer.input_layernorm, x)
            (q, k, v), fused = self._group(i, "self_attn.qkv", layer, h, batch)
            if fused is not None and joint is not None:  # q and k side by side in the packed output: one RoPE
                heads = q.shape[-1] // self.head_dim
                qk = fused[..., : q.shape[-1] + k.shape[-1]].unflatten(-1, (-1, self.head_dim))
                qk = torch.addcmul(qk * joint[0], qk.roll(half, dims=-1), joint[1])
                q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
            else:
                q = q.view(rows, length, -1, self.head_dim).transpose(1, 2)
                k = k.view(rows, length, -1, self.head_dim).transpose(1, 2)
                q, k = self.rope(q, k, cos, sin)
            v = v.view(rows, length, -1, self.head_dim).transpose(1, 2)
            keys, values = self.cache.update(k, v, i, batch)
            out = self._attention(attn, q, keys, values, batch)
            x = x + self._linear(i, "self_attn.o_proj", attn.o_proj, out.reshape(rows, length, -1), batch)
            h = self._norm(layer.post_attention_layernorm, x)
            (gate, up), _ = self._group(i, "mlp.gate_up", layer, h, batch)
            x = x + self._linear(i, "mlp.down_proj", mlp.down_proj, mlp.act_fn(gate) * up, batch)
        return x

    def _attention(self, attn: nn.Module, q, keys, values, batch: Batch) -> torch.Tensor:
        """(B, T, heads, head_dim) attention output of the step."""
        if self.direct_sdpa and batch.kind == "prefill":  # each packed prompt over its own tokens, causal
            outs = [F.scaled_dot_product_attention(q[:, :, start:end], keys[:, :, start:end],
                                                   values[:, :, start:end], is_causal=True, scale=attn.scaling,
                                                   enable_gqa=True) for start, end in batch.segments]
            return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)).transpose(1, 2)
        if self.direct_decode and batch.kind == "decode":  # over the cache view; the mask stops each row
            return over_view_rows(batch, q, keys.shape[0],
                                  lambda rows: self._decode_attention(rows, keys, values, batch.mask, attn.scaling))
        return slot_attention(attn, q, keys, values, batch.mask, paratune_batch=batch, dropout=0.0,
                              scaling=attn.scaling)[0]

    @staticmethod
    def _decode_attention(q, keys, values, mask, scale: float) -> torch.Tensor:
        """(V, 1, heads, head_dim) for one query per row (V, heads, 1, head_dim) over the cache view (V, kv_heads,
        L, head_dim). From GROUPED_DECODE_ROWS rows on, two matmuls with each KV head's query heads side by side
        beat SDPA's kernel (measured on a 2-core CPU: 0.55-0.93x its time at 32-64 rows; 1.2-2.3x at 1-8)."""
        rows, heads = q.shape[:2]
        if rows < GROUPED_DECODE_ROWS:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale,
                                                  enable_gqa=True).transpose(1, 2)
        kv_heads, length = keys.shape[1], keys.shape[2]
        scores = torch.matmul(q.view(rows, kv_heads, heads // kv_heads, -1), keys.transpose(-1, -2))
        weights = torch.softmax(torch.add(mask.view(rows, 1, 1, length), scores, alpha=scale), dim=-1)
        return torch.matmul(weights, values).view(rows, 1, heads, -1)

    def _group(self, index: int, group: str, layer: nn.Module, x: torch.Tensor, batch: Batch):
        """(the outputs of a group's projections of ``x``, the whole packed output or None): one packed matrix,
        split into views that LoRA and the output-side deltas then change in place; each projection on its own
        where the group is not packed or a row scales a member's input ((IA)^3 on its input side: the members no
        longer share one input)."""
        members = GROUPS[group]
        if (index, group) not in self.packed or any(batch.adapters.scales_input((index, m)) for m in members):
            return [self._linear(index, m, layer.get_submodule(m), x, batch) for m in members], None
        fused = self.packed.linear((index, group), None, x)
        parts = fused.split(self.widths[group], dim=-1)
        for name, out in zip(members, parts):
            self._adapt_output((index, name), x, out, batch)
        return parts, fused

    def _norm(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.fused_norm:
            return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
        return norm(x)

    def _linear(self, index: int, name: str, module: nn.Linear, x: torch.Tensor, batch: Batch):
        key = (index, name)
        if batch.adapters.scales_input(key):
            x = batch.adapters.scale_input(key, x)
        out = self.packed.linear(key, module, x)
        self._adapt_output(key, x, out, batch)
        return out

    def _adapt_output(self, key, x: torch.Tensor, out: torch.Tensor, batch: Batch) -> None:
        """LoRA, then the output-side delta, in place on ``out`` (a fresh output, or a view of a group's)."""
        adapters = batch.adapters
        if adapters.lora:
            adapters.lora_(self.paths[key], x, out)
        if adapters.scales_output(key):
            adapters.scale_output_(key, out)
