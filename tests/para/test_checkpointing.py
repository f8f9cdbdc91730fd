"""Gradient checkpointing recomputes each layer with the PARA vectors of its own forward."""

import peft
import pytest
import torch

from paratune import ParaConfig
from tests.tiny_models import VOCAB, randomize_adapter, tiny_model


def batch(seed):
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :4] = -100  # prompt: the first 4 tokens
    return ids, labels


def gradients_of_two_forwards(checkpointing, attn="eager", dtype=torch.float32, use_reentrant=False):
    model = tiny_model("llama")
    model.config._attn_implementation = attn
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    peft_model = peft.get_peft_model(model, ParaConfig(targets=["q", "k", "v", "o", "up", "gate", "down"]))
    randomize_adapter(peft_model)
    peft_model.to(dtype).train()
    # Two forwards before one backward (as preference and custom losses do): the replay of the first forward
    # must use the first forward's vectors, not the ones the second forward left in the layers.
    (ids1, labels1), (ids2, labels2) = batch(1), batch(2)
    loss = peft_model(input_ids=ids1, labels=labels1).loss + 2 * peft_model(input_ids=ids2, labels=labels2).loss
    loss.backward()
    return {n: p.grad.float().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_two_forwards_then_one_backward_give_the_unchecked_gradients(attn):
    plain = gradients_of_two_forwards(False, attn)
    checked = gradients_of_two_forwards(True, attn)
    assert plain.keys() == checked.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=1e-5, atol=1e-7)


def test_reentrant_checkpointing_is_switched_and_still_exact():
    plain = gradients_of_two_forwards(False)
    with pytest.warns(UserWarning, match="non-reentrant"):
        checked = gradients_of_two_forwards(True, use_reentrant=True)
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=1e-5, atol=1e-7)


def test_bf16_two_forwards_then_one_backward():
    # bf16: the same computation in the same order, so equal up to bf16 noise (relative 2e-2 on gradients).
    plain = gradients_of_two_forwards(False, dtype=torch.bfloat16)
    checked = gradients_of_two_forwards(True, dtype=torch.bfloat16)
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], rtol=2e-2, atol=1e-3)
