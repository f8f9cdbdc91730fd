"""Where PARA's prompt comes from when a trainer passes no para_prompt_mask: labels, TRL's completion_mask,
or nothing; what is refused (plain-LM labels, packed rows, a prompt mask covering labelled tokens)."""

import warnings

import peft
import pytest
import torch

from paratune import ParaConfig
from tests.tiny_models import VOCAB, randomize_adapter, tiny_model

PROMPT = 5  # prompt length of every row below
IDS = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))


def para_model(pooling="attention", train=False):
    peft_model = peft.get_peft_model(tiny_model("llama"), ParaConfig(pooling=pooling))
    randomize_adapter(peft_model)
    return peft_model.train() if train else peft_model.eval()


def completion_only_labels(ids, prompt=PROMPT):
    labels = ids.clone()
    labels[:, :prompt] = -100
    return labels


def prompt_mask(ids, prompt=PROMPT):
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, :prompt] = True
    return mask


@pytest.mark.parametrize("pooling", ["attention", "mean", "max", "last"])
def test_labels_alone_pool_the_prompt_exactly_as_an_explicit_mask(pooling):
    peft_model = para_model(pooling)
    from_labels = peft_model(input_ids=IDS, labels=completion_only_labels(IDS))
    explicit = peft_model(input_ids=IDS, para_prompt_mask=prompt_mask(IDS))
    assert torch.equal(from_labels.logits, explicit.logits)
    whole = peft_model(input_ids=IDS)  # no mask, no labels: the whole input is the prompt (inference)
    assert not torch.allclose(whole.logits, explicit.logits, atol=1e-4)


def test_with_labels_the_response_never_reaches_the_vectors():
    peft_model = para_model()
    other = IDS.clone()
    other[:, PROMPT:] = torch.randint(3, VOCAB, (2, 12 - PROMPT), generator=torch.Generator().manual_seed(9))
    a = peft_model(input_ids=IDS, labels=completion_only_labels(IDS)).logits
    b = peft_model(input_ids=other, labels=completion_only_labels(other)).logits
    # Causal attention: the prompt positions see only the prompt, unless the pooled vectors carried the response.
    assert torch.equal(a[:, :PROMPT], b[:, :PROMPT])
    assert not torch.allclose(a[:, PROMPT:], b[:, PROMPT:])


def test_right_padding_and_later_unlabelled_turns_are_not_pooled():
    peft_model = para_model()
    attention = torch.ones_like(IDS)
    attention[1, 9:] = 0  # row 1 is right-padded
    labels = completion_only_labels(IDS)
    labels[:, 7:9] = -100  # a later user turn without loss: after the first response token, so not the prompt
    labels[1, 9:] = -100
    expected = peft_model(input_ids=IDS, attention_mask=attention, para_prompt_mask=prompt_mask(IDS)).logits
    got = peft_model(input_ids=IDS, attention_mask=attention, labels=labels).logits
    assert torch.equal(got, expected)


def test_left_padding_with_labels_pools_from_the_first_attended_token():
    peft_model = para_model()
    ids = IDS.clone()
    attention = torch.ones_like(ids)
    attention[1, :3] = 0  # row 1 is left-padded: its prompt is tokens 3..4
    labels = completion_only_labels(ids)
    mask = prompt_mask(ids)
    mask[1, :3] = False
    assert torch.equal(peft_model(input_ids=ids, attention_mask=attention, labels=labels).logits,
                       peft_model(input_ids=ids, attention_mask=attention, para_prompt_mask=mask).logits)


@pytest.mark.parametrize("name", ["completion_mask", "assistant_masks"])
def test_trl_completion_masks_mark_the_response(name):
    peft_model = para_model()
    response = (~prompt_mask(IDS)).long()
    got = peft_model(input_ids=IDS, **{name: response}).logits
    assert torch.equal(got, peft_model(input_ids=IDS, para_prompt_mask=prompt_mask(IDS)).logits)


def test_plain_language_modelling_labels_are_refused_with_a_fix():
    peft_model = para_model(train=True)
    with pytest.raises(ValueError, match=r"PARA cannot tell the prompt from the response in row 0: its labels "
                                         r"label every attended token from the first one \(plain language "
                                         r"modelling\).*Pass para_prompt_mask"):
        peft_model(input_ids=IDS, labels=IDS)
    with pytest.raises(ValueError, match="in row 0: its completion_mask label every attended token"):
        peft_model(input_ids=IDS, completion_mask=torch.ones_like(IDS))


def test_a_prompt_mask_over_labelled_tokens_is_refused():
    peft_model = para_model(train=True)
    mask = prompt_mask(IDS, prompt=PROMPT + 1)  # one response token too many
    with pytest.raises(ValueError, match=r"para_prompt_mask marks tokens that have labels \(row 0\)"):
        peft_model(input_ids=IDS, labels=completion_only_labels(IDS), para_prompt_mask=mask)


def test_packed_rows_are_refused():
    peft_model = para_model(train=True)
    position_ids = torch.cat([torch.arange(6), torch.arange(6)]).repeat(2, 1)  # two examples per row
    with pytest.raises(ValueError, match=r"packed \(padding-free\) batch \(position_ids restart inside row 0\).*"
                                         r"SFTConfig\(packing=False, padding_free=False\)"):
        peft_model(input_ids=IDS, position_ids=position_ids, labels=completion_only_labels(IDS))
    # Left padding gives repeated positions on padding only: not packing.
    attention = torch.ones_like(IDS)
    attention[1, :3] = 0
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    peft_model(input_ids=IDS, attention_mask=attention, position_ids=positions, labels=completion_only_labels(IDS))


def test_training_without_any_prompt_information_warns_once():
    peft_model = para_model(train=True)
    with pytest.warns(UserWarning, match="without para_prompt_mask or labels: the generators pool every input"):
        peft_model(input_ids=IDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft_model(input_ids=IDS)  # once
        peft_model.eval()(input_ids=IDS)  # inference never warns

