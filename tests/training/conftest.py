"""Shared by the training tests: one torch thread, and a tiny Llama that trains visibly in a few steps."""

import pytest
import torch
import transformers

from tests.tiny_models import LLAMA_LIKE


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """These models are tiny: one thread is several times faster than two on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(tokenizer, seed: int = 0) -> transformers.PreTrainedModel:
    """A 2-layer, 32-wide Llama over the tokenizer's vocabulary. initializer_range=0.2 gives hidden states
    with enough structure for a few PARA steps to lower the loss visibly."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        **{**LLAMA_LIKE, "max_position_embeddings": 512},
        vocab_size=len(tokenizer), initializer_range=0.2, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
