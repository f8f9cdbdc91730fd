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
}
ARCHS = list(CONFIGS)


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
