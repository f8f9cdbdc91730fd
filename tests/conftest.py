"""Shared fixtures: the real SmolLM2 tokenizer (converted once from the embedded GGUF), with and without
its chat template. Tiny models are in tests/tiny_models.py."""

from __future__ import annotations

import os
from pathlib import Path

import peft
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from paratune.models import DEFAULT_MODEL, cache_dir, load_backbone

# The test suite's own pointer at the shared local data copy (paratune itself has no default folder); `make test`
# sets PARATUNE_DATA, and tests that need the data skip when the folder is absent.
os.environ.setdefault("PARATUNE_DATA", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))


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


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory, chat_tokenizer):
    """A tiny Llama saved with the real SmolLM2 tokenizer (``model``) and a PARA adapter for it (``tenant``)."""
    from paratune import ParaConfig
    from tests.tiny_models import LLAMA_LIKE, randomize_adapter

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(chat_tokenizer), **LLAMA_LIKE, tie_word_embeddings=False,
                                      eos_token_id=chat_tokenizer.eos_token_id)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(root / "model")
    chat_tokenizer.save_pretrained(root / "model")
    para = peft.get_peft_model(model, ParaConfig())
    randomize_adapter(para, scale=0.5)
    para.save_pretrained(root / "tenant")
    return root
