"""Fixtures for the task tests: the real SmolLM2 tokenizer (with/without chat template) and tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from paratune.models import DEFAULT_MODEL, cache_dir


@pytest.fixture(scope="session")
def tokenizer_folder():
    folder = cache_dir() / "models" / DEFAULT_MODEL
    if not (folder / "tokenizer.json").is_file():
        try:  # first use converts the embedded GGUF once (~20 s)
            from paratune.models import load_backbone

            load_backbone()
        except Exception as e:  # pragma: no cover - depends on the machine
            pytest.skip(f"SmolLM2 tokenizer unavailable: {e}")
    return folder


@pytest.fixture(scope="session")
def chat_tokenizer(tokenizer_folder):
    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    assert tok.chat_template
    return tok


@pytest.fixture(scope="session")
def plain_tokenizer(tokenizer_folder):
    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    tok.chat_template = None
    return tok


@pytest.fixture(params=["chat_template", "no_template"])
def tokenizer(request, chat_tokenizer, plain_tokenizer):
    return chat_tokenizer if request.param == "chat_template" else plain_tokenizer


def make_tiny_model(vocab_size: int, seed: int = 0, initializer_range: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        initializer_range=initializer_range,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def make_biased_model(vocab_size: int, favoured: dict[int, float]) -> LlamaForCausalLM:
    """A tiny model whose next-token distribution is the same at every position: softmax(bias), with
    bias 0 except ``favoured`` (token id -> bias)."""
    model = make_tiny_model(vocab_size)
    head = torch.nn.Linear(model.config.hidden_size, vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        for tid, b in favoured.items():
            head.bias[tid] = b
    model.lm_head = head
    return model.eval()


@pytest.fixture(scope="session")
def biased_model():
    """Factory: ``biased_model(vocab_size, {token_id: bias})``, see ``make_biased_model``."""
    return make_biased_model


@pytest.fixture(scope="session")
def random_model(chat_tokenizer):
    # a wider init than the default makes the logits depend clearly on the context (off-by-one or padding
    # bugs show) while keeping summed log-likelihoods small enough for float32 comparisons at 1e-5
    return make_tiny_model(len(chat_tokenizer), seed=0, initializer_range=0.15)
