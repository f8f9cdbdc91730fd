"""Fixtures for the task tests: tiny models (tokenizers come from tests/conftest.py), and the local data copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


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


def local_data() -> Path | None:
    """The local copy of the evaluation data the test run points at ($PARATUNE_DATA), or None."""
    folder = os.environ.get("PARATUNE_DATA")
    return Path(folder) if folder and Path(folder).is_dir() else None


def needs_local_data(*parts: str):
    """Skip unless $PARATUNE_DATA holds ``parts`` (a file or folder of the local layout)."""
    folder = local_data()
    present = folder is not None and folder.joinpath(*parts).exists()
    return pytest.mark.skipif(not present, reason=f"needs the local data copy ($PARATUNE_DATA/{'/'.join(parts)}; "
                                                   "make test sets PARATUNE_DATA)")
