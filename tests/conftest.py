"""Shared fixtures: the real SmolLM2 tokenizer (converted once from the embedded GGUF), with and without
its chat template. Tiny models are in tests/tiny_models.py."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from paratune.models import DEFAULT_MODEL, cache_dir, load_backbone


@pytest.fixture(scope="session")
def tokenizer_folder():
    folder = cache_dir() / "models" / DEFAULT_MODEL
    if not (folder / "tokenizer.json").is_file():
        load_backbone()  # first use converts the embedded GGUF once (~20 s)
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
