"""Shared by the training tests: one torch thread, a tiny Llama that trains visibly in a few steps, and a spy on
the trained model's forwards."""

import pytest
import torch
import transformers
from transformers import TrainerCallback

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


class ForwardSpy(TrainerCallback):
    """Records the keyword arguments of every forward of the trained (PEFT) model."""

    def __init__(self):
        self.calls: list[dict] = []
        self.pool_masks: list[torch.Tensor] = []
        self.model = None  # the PeftModel being trained

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model

        def pre(module, a, kw):
            self.calls.append({k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in kw.items()})

        def post(module, a, kw, out):
            para_state = getattr(module.base_model, "_para_state", None)
            if para_state is not None:
                self.pool_masks.append(para_state.pool_mask.detach().clone())

        model.register_forward_pre_hook(pre, with_kwargs=True)
        model.register_forward_hook(post, with_kwargs=True)
