"""Tiny randomly initialised causal LMs of every architecture family PARA supports (built offline)."""

from __future__ import annotations

import torch
import transformers

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256)

CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON, **LLAMA_LIKE),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, **LLAMA_LIKE),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, **LLAMA_LIKE, head_dim=8),
    "mistral": lambda: transformers.MistralConfig(**COMMON, **LLAMA_LIKE, sliding_window=None),
    "gemma": lambda: transformers.GemmaConfig(**COMMON, **LLAMA_LIKE, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**COMMON, **LLAMA_LIKE, head_dim=8, sliding_window=64),
    "gpt2": lambda: transformers.GPT2Config(**COMMON, n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "phi3": lambda: transformers.Phi3Config(**COMMON, **LLAMA_LIKE),
    # q_norm / k_norm after the projections: per head (Gemma3: on (B, heads, T, head_dim)) or full width (OLMo2).
    "olmo2": lambda: transformers.Olmo2Config(**COMMON, **LLAMA_LIKE),
    "gemma3": lambda: transformers.Gemma3TextConfig(**COMMON, **LLAMA_LIKE, head_dim=8, sliding_window=64),
    # Non-Llama names and fused projections.
    "starcoder2": lambda: transformers.Starcoder2Config(**COMMON, **LLAMA_LIKE),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**COMMON, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4,
                                                   max_position_embeddings=256),
    "falcon": lambda: transformers.FalconConfig(**COMMON, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    "falcon_new": lambda: transformers.FalconConfig(**COMMON, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, new_decoder_architecture=True,
                                                    num_kv_heads=2),
    "opt": lambda: transformers.OPTConfig(**COMMON, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                          num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=256),
    "bloom": lambda: transformers.BloomConfig(**COMMON, hidden_size=32, n_layer=2, n_head=4),
    "mpt": lambda: transformers.MptConfig(**COMMON, d_model=32, n_layers=2, n_heads=4, expansion_ratio=2),
    # Mixture of experts: Qwen2-MoE has a shared expert (up/gate/down); Mixtral's experts are only fused 3-D weights.
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(**COMMON, **LLAMA_LIKE, moe_intermediate_size=16,
                                                     shared_expert_intermediate_size=48, num_experts=4,
                                                     num_experts_per_tok=2),
    "mixtral": lambda: transformers.MixtralConfig(**COMMON, **LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
}
ARCHS = list(CONFIGS)

ALL = ["q", "k", "v", "o", "up", "gate", "down"]
NO_GATE = ["q", "k", "v", "o", "up", "down"]  # non-gated FFN
# The targets each tiny family offers; the interleaved q/k/v of GPT-NeoX, Bloom and Falcon's new architecture only
# where the scaler places interleaved slices (see paratune.para.arch.place_delta), else PARA refuses them.
_TARGETS = {"gpt2": NO_GATE, "starcoder2": NO_GATE, "gpt_neox": NO_GATE, "falcon": NO_GATE, "falcon_new": NO_GATE,
            "opt": NO_GATE, "bloom": NO_GATE, "mpt": NO_GATE, "mixtral": ["q", "k", "v", "o"]}
INTERLEAVED_QKV = ("gpt_neox", "bloom", "falcon_new")
# FFN projections that run on (batch * positions, features) tensors: OPT's fc1/fc2, an MoE block's shared expert.
FLATTENED_FFN = ("opt", "qwen2_moe")


def scaler_places_interleaved() -> bool:
    from paratune.para.arch import Site, UnsupportedModelError, _check_scaler_places

    try:
        _check_scaler_places(Site("qkv", "output", 4, 8, features=24, block=4, stride=12))
        return True
    except UnsupportedModelError:
        return False


def scaler_scales_flattened_rows() -> bool:
    from paratune.para.arch import _scaler_scales_flattened_rows

    return _scaler_scales_flattened_rows()


def tiny_targets(arch: str) -> list[str]:
    targets = _TARGETS.get(arch, ALL)
    if arch in INTERLEAVED_QKV and not scaler_places_interleaved():
        targets = [t for t in targets if t not in ("q", "k", "v")]
    if arch in FLATTENED_FFN and not scaler_scales_flattened_rows():
        targets = [t for t in targets if t not in ("up", "gate", "down")]
    return targets


def tiny_model(arch: str = "llama", seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # never stop early: tests compare fixed-length generations
    return model


def randomize_adapter(peft_model, adapter: str = "default", seed: int = 1, scale: float = 0.3) -> None:
    """Give an adapter non-trivial weights (a fresh adapter is exactly the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if f".generators.{adapter}." in name:
                param.add_(torch.randn(param.shape, generator=generator) * scale)
