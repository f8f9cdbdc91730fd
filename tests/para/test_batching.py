"""Mixed-adapter batches, padding and causality."""

import peft
import pytest
import torch

from paratune import BASE_ROW, ParaConfig
from tests.tiny_models import VOCAB, randomize_adapter, tiny_model


def two_adapter_model(arch="llama"):
    model = tiny_model(arch)
    peft_model = peft.get_peft_model(model, ParaConfig(), adapter_name="a")
    peft_model.add_adapter("b", ParaConfig(r=8, targets=["k", "up", "down"], pooling="mean"))
    randomize_adapter(peft_model, "a", seed=1)
    randomize_adapter(peft_model, "b", seed=2)
    return peft_model.eval()


def run_alone(peft_model, name, **kwargs):
    if name == BASE_ROW:
        with peft_model.disable_adapter():
            return peft_model(**kwargs).logits
    peft_model.set_adapter(name)
    return peft_model(**kwargs).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mixed_batch_forward_equals_each_row_alone(arch):
    peft_model = two_adapter_model(arch)
    ids = torch.randint(3, VOCAB, (3, 8), generator=torch.Generator().manual_seed(0))
    names = ["a", BASE_ROW, "b"]
    mixed = peft_model(input_ids=ids, adapter_names=names).logits
    for row, name in enumerate(names):
        alone = run_alone(peft_model, name, input_ids=ids[row : row + 1])
        torch.testing.assert_close(mixed[row : row + 1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[0], run_alone(peft_model, "b", input_ids=ids[:1])[0], atol=1e-3)


def test_mixed_batch_generate_equals_each_row_alone():
    peft_model = two_adapter_model()
    prompt = torch.randint(3, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    names = ["b", "a", BASE_ROW]
    mixed = peft_model.generate(input_ids=prompt, adapter_names=names, max_new_tokens=20, do_sample=False)
    for row, name in enumerate(names):
        if name == BASE_ROW:
            with peft_model.disable_adapter():
                alone = peft_model.generate(input_ids=prompt[row : row + 1], max_new_tokens=20, do_sample=False)
        else:
            peft_model.set_adapter(name)
            alone = peft_model.generate(input_ids=prompt[row : row + 1], max_new_tokens=20, do_sample=False)
        assert torch.equal(mixed[row : row + 1], alone), name


def test_unknown_adapter_name_is_refused():
    peft_model = two_adapter_model()
    with pytest.raises(ValueError, match=r"unknown adapter name\(s\) \['c'\].*'__base__'"):
        peft_model(input_ids=torch.ones(2, 3, dtype=torch.long), adapter_names=["a", "c"])


def padded(sequences, side):
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if side == "right":
            ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
        else:
            ids[row, width - len(seq) :], mask[row, width - len(seq) :] = seq, 1
    return ids, mask


def test_right_padded_forward_equals_each_sequence_alone():
    peft_model = two_adapter_model()
    peft_model.set_adapter("a")
    g = torch.Generator().manual_seed(3)
    sequences = [torch.randint(3, VOCAB, (n,), generator=g) for n in (9, 4, 6)]
    ids, mask = padded(sequences, "right")
    logits = peft_model(input_ids=ids, attention_mask=mask).logits
    for row, seq in enumerate(sequences):
        alone = peft_model(input_ids=seq[None]).logits
        torch.testing.assert_close(logits[row : row + 1, : len(seq)], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_left_padded_generate_equals_each_prompt_alone(arch):
    peft_model = two_adapter_model(arch)
    peft_model.set_adapter("b")
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (7, 3, 5)]
    ids, mask = padded(prompts, "left")
    batch = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = peft_model.generate(input_ids=prompt[None], max_new_tokens=20, do_sample=False)
        assert torch.equal(batch[row, ids.shape[1] :], alone[0, len(prompt) :])


def generator_vectors(peft_model):
    """The scaling tensors every layer computed in the last prefill."""
    return [
        {k: v.clone() for k, v in module.scaler.scales.items()}
        for module in peft_model.modules()
        if type(module).__name__ == "ParaLayer"
    ]


def test_response_tokens_never_reach_earlier_positions_or_the_vectors():
    peft_model = two_adapter_model()
    peft_model.set_adapter("a")
    ids = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(5))
    prompt_mask = torch.zeros_like(ids, dtype=torch.bool)
    prompt_mask[:, :5] = True
    logits = peft_model(input_ids=ids, para_prompt_mask=prompt_mask).logits
    vectors = generator_vectors(peft_model)
    changed = ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % VOCAB
    changed_logits = peft_model(input_ids=changed, para_prompt_mask=prompt_mask).logits
    torch.testing.assert_close(changed_logits[:, :8], logits[:, :8], atol=0, rtol=0)
    assert not torch.allclose(changed_logits[:, 8:], logits[:, 8:])
    for before, after in zip(vectors, generator_vectors(peft_model)):
        for key in before:
            assert torch.equal(before[key], after[key])


def test_without_a_prompt_mask_the_whole_input_is_pooled():
    """The control for the causality test: pooling everything lets a late token change early logits."""
    peft_model = two_adapter_model()
    peft_model.set_adapter("a")
    ids = torch.randint(3, VOCAB, (1, 12), generator=torch.Generator().manual_seed(5))
    changed = ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % VOCAB
    assert not torch.allclose(peft_model(input_ids=changed).logits[:, :8], peft_model(input_ids=ids).logits[:, :8])


def test_prompt_mask_shape_is_checked():
    peft_model = two_adapter_model()
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"para_prompt_mask must have shape \(batch, seq_len\) = \(2, 5\), got \(2, 7\)"):
        peft_model(input_ids=ids, para_prompt_mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="para_prompt_mask has 3 rows but the batch has 2"):
        peft_model(input_ids=ids, para_prompt_mask=torch.ones(3, 5, dtype=torch.bool))


def test_empty_prompt_row_is_refused():
    peft_model = two_adapter_model()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match="at least one prompt token for PARA to pool over; row 1 has none"):
        peft_model(input_ids=torch.ones(2, 5, dtype=torch.long), para_prompt_mask=mask)


@pytest.mark.parametrize("pooling", ["attention", "mean", "max", "last"])
def test_every_pooling_pads_correctly(pooling):
    model = tiny_model("llama")
    peft_model = peft.get_peft_model(model, ParaConfig(pooling=pooling)).eval()
    randomize_adapter(peft_model)
    g = torch.Generator().manual_seed(6)
    sequences = [torch.randint(3, VOCAB, (n,), generator=g) for n in (7, 3)]
    ids, mask = padded(sequences, "right")
    logits = peft_model(input_ids=ids, attention_mask=mask).logits
    for row, seq in enumerate(sequences):
        alone = peft_model(input_ids=seq[None]).logits
        torch.testing.assert_close(logits[row : row + 1, : len(seq)], alone, atol=1e-5, rtol=1e-5)
