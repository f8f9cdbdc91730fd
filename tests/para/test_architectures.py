"""Identity at init and prefill-once generation on every supported architecture."""

import peft
import pytest
import torch

from paratune import ParaConfig
from tests.tiny_models import ARCHS, VOCAB, randomize_adapter, tiny_model, tiny_targets

ALL_TARGETS = {arch: tiny_targets(arch) for arch in ARCHS}


def default_targets(arch):
    """q, v, up where the family has them (PARA's default), else the targets it does have."""
    return [t for t in ("q", "v", "up") if t in ALL_TARGETS[arch]] or ALL_TARGETS[arch]


def wrapped(arch, targets=None, seed=0, randomize=True, **config):
    model = tiny_model(arch, seed=seed)
    targets = targets or default_targets(arch)
    peft_model = peft.get_peft_model(model, ParaConfig(targets=targets, **config))
    if randomize:
        randomize_adapter(peft_model)
    return peft_model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_fresh_adapter_is_exactly_the_base_model(arch):
    torch.manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 9))
    base = tiny_model(arch)(ids).logits
    peft_model = wrapped(arch, targets=ALL_TARGETS[arch], randomize=False)
    assert torch.equal(peft_model(ids).logits, base)


@pytest.mark.parametrize("arch", ARCHS)
def test_trained_adapter_changes_outputs_and_disable_restores_base(arch):
    torch.manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 9))
    base = tiny_model(arch)(ids).logits
    peft_model = wrapped(arch, targets=ALL_TARGETS[arch])
    assert not torch.allclose(peft_model(ids).logits, base, atol=1e-3)
    with peft_model.disable_adapter():
        assert torch.equal(peft_model(ids).logits, base)


def full_recompute_logits(peft_model, sequences, prompt_len):
    prompt_mask = torch.zeros_like(sequences, dtype=torch.bool)
    prompt_mask[:, :prompt_len] = True
    return peft_model(input_ids=sequences, para_prompt_mask=prompt_mask).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_greedy_equals_full_recompute_with_prompt_mask(arch):
    peft_model = wrapped(arch)
    torch.manual_seed(1)
    prompt = torch.randint(3, VOCAB, (2, 7))
    out = peft_model.generate(input_ids=prompt, max_new_tokens=24, do_sample=False,
                              output_logits=True, return_dict_in_generate=True)
    sequences = out.sequences
    assert sequences.shape[1] == 7 + 24
    logits = full_recompute_logits(peft_model, sequences, 7)
    recomputed_tokens = logits[:, 6:-1].argmax(-1)
    assert torch.equal(recomputed_tokens, sequences[:, 7:])
    generated_logits = torch.stack(out.logits, dim=1)
    torch.testing.assert_close(generated_logits, logits[:, 6:-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, task_type", [("llama", None), ("llama", "CAUSAL_LM"), ("qwen2", None), ("gpt2", None)])
def test_generation_without_cache_equals_cached(arch, task_type):
    peft_model = wrapped(arch, task_type=task_type)
    prompt = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    cached = peft_model.generate(input_ids=prompt, max_new_tokens=20, do_sample=False)
    uncached = peft_model.generate(input_ids=prompt, max_new_tokens=20, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_static_cache_equals_dynamic_cache():
    peft_model = wrapped("llama")
    prompt = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    dynamic = peft_model.generate(input_ids=prompt, max_new_tokens=20, do_sample=False)
    static = peft_model.generate(input_ids=prompt, max_new_tokens=20, do_sample=False, cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_beam_search_reuses_prefill_vectors():
    """Each beam's final sequence scores like a full recompute that pools over the prompt only."""
    peft_model = wrapped("llama")
    prompt = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
    out = peft_model.generate(input_ids=prompt, max_new_tokens=12, num_beams=3, num_return_sequences=3,
                              do_sample=False, output_scores=True, return_dict_in_generate=True,
                              length_penalty=0.0)
    logits = full_recompute_logits(peft_model, out.sequences, 6)
    logprobs = torch.log_softmax(logits[:, 5:-1], -1).gather(-1, out.sequences[:, 6:, None])[..., 0]
    torch.testing.assert_close(logprobs.sum(-1), out.sequences_scores, atol=1e-4, rtol=1e-4)
    # and differs from scoring the same sequences with the response pooled in too
    leaky = torch.log_softmax(peft_model(input_ids=out.sequences).logits[:, 5:-1], -1)
    leaky = leaky.gather(-1, out.sequences[:, 6:, None])[..., 0].sum(-1)
    assert not torch.allclose(leaky, out.sequences_scores, atol=1e-3)


def test_gate_target_on_gpt2_is_refused_with_the_available_targets():
    with pytest.raises(ValueError, match=r"target 'gate' is not available for GPT2LMHeadModel"):
        peft.get_peft_model(tiny_model("gpt2"), ParaConfig(targets=["q", "gate"]))


def test_layers_to_transform_out_of_range():
    with pytest.raises(ValueError, match="has 2 layers"):
        peft.get_peft_model(tiny_model("llama"), ParaConfig(layers_to_transform=[0, 5]))
