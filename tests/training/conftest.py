"""Fixtures for the training-data tests: the real SmolLM2 tokenizer, with and without its chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

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
