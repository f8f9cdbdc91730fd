"""PARA through PEFT's public API: save/load, adapter management, training, parameter counts."""

import json

import peft
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

import paratune
from paratune import ParaConfig
from paratune.para.arch import decoder_layers
from tests.tiny_models import VOCAB, randomize_adapter, tiny_model

IDS = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


def trained(config=None, adapter="default", arch="llama"):
    peft_model = peft.get_peft_model(tiny_model(arch), config or ParaConfig(), adapter_name=adapter)
    randomize_adapter(peft_model, adapter)
    return peft_model.eval()


def test_save_load_round_trip_is_exact_and_uses_safetensors_and_json(tmp_path):
    peft_model = trained(ParaConfig(r=4, targets=["q", "k", "up", "down"], pooling="max"))
    expected = peft_model(input_ids=IDS).logits
    peft_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PARA" and saved["r"] == 4 and saved["targets"] == ["q", "k", "up", "down"]
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert all(".para.generators." in key and ".default." not in key for key in tensors)
    assert len(tensors) == 2 * 5  # per layer: attention? no (max pooling); down w+b, 2 rational, up
    loaded = PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
    assert torch.equal(loaded(input_ids=IDS).logits, expected)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode by default


def test_load_adapter_set_adapter_and_delete_adapter(tmp_path):
    first = trained(adapter="default")
    first.save_pretrained(tmp_path / "a")
    second = trained(ParaConfig(pooling="last"), adapter="default")
    randomize_adapter(second, "default", seed=7)
    second.save_pretrained(tmp_path / "b")
    expected_a, expected_b = first(input_ids=IDS).logits, second(input_ids=IDS).logits

    model = PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "a", adapter_name="a").eval()
    model.load_adapter(tmp_path / "b", adapter_name="b")
    assert torch.equal(model(input_ids=IDS).logits, expected_a)
    model.set_adapter("b")
    assert torch.equal(model(input_ids=IDS).logits, expected_b)
    mixed = model(input_ids=IDS, adapter_names=["a", "b"]).logits
    torch.testing.assert_close(mixed, torch.stack([expected_a[0], expected_b[1]]), atol=1e-5, rtol=1e-5)
    model.delete_adapter("b")
    assert list(model.peft_config) == ["a"]
    assert all("b" not in m.generators for m in model.modules() if isinstance(m, paratune.ParaLayer))
    assert torch.equal(model(input_ids=IDS).logits, expected_a)


def test_add_adapter_keeps_the_first_one_trainable_only_when_active():
    peft_model = trained()
    peft_model.add_adapter("other", ParaConfig(r=2))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".generators.default." in n for n in trainable)
    peft_model.set_adapter("other")
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".generators.other." in n for n in trainable)


def test_only_para_parameters_get_gradients():
    peft_model = trained()
    peft_model.train()
    labels = IDS.clone()
    labels[:, :4] = -100  # a completion-only loss: the first 4 tokens are the prompt PARA pools
    peft_model(input_ids=IDS, labels=labels).loss.backward()
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    para = {n for n, p in peft_model.named_parameters() if ".para.generators." in n}
    assert with_grad == para
    assert all(peft_model.get_parameter(n).grad.abs().sum() > 0 for n in para)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(use_reentrant):
    prompt_mask = torch.zeros_like(IDS, dtype=torch.bool)
    prompt_mask[:, :4] = True
    labels = IDS.masked_fill(prompt_mask, -100)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("llama")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        peft_model = peft.get_peft_model(model, ParaConfig())
        randomize_adapter(peft_model)
        peft_model.train()
        if checkpointing and use_reentrant:
            with pytest.warns(UserWarning, match="non-reentrant"):
                peft_model(input_ids=IDS, labels=labels, para_prompt_mask=prompt_mask).loss.backward()
        else:
            peft_model(input_ids=IDS, labels=labels, para_prompt_mask=prompt_mask).loss.backward()
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def expected_parameter_count(model, config):
    """sum over layers of d*r + r + r*(sum of widths) + pooling (d for attention) + activation (12 for rational)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    widths = {
        "q": cfg.num_attention_heads * head_dim,
        "k": cfg.num_key_value_heads * head_dim,
        "v": cfg.num_key_value_heads * head_dim,
        "o": cfg.hidden_size,
        "up": cfg.intermediate_size,
        "gate": cfg.intermediate_size,
        "down": cfg.intermediate_size,
    }
    d, r = cfg.hidden_size, config.r
    per_layer = d * r + r + r * sum(widths[t] for t in config.targets)
    per_layer += d if config.pooling == "attention" else 0
    per_layer += 12 if config.activation == "rational" else 0
    n_layers = len(config.layers_to_transform or range(cfg.num_hidden_layers))
    return n_layers * per_layer


@pytest.mark.parametrize(
    "arch, config",
    [
        ("llama", ParaConfig()),
        ("qwen3", ParaConfig(r=8, targets=["q", "k", "v", "o", "up", "gate", "down"], pooling="mean")),
        ("phi3", ParaConfig(r=4, targets=["v", "gate", "up"], activation="gelu", layers_to_transform=[1])),
        ("gemma", ParaConfig(r=3)),
    ],
)
def test_trainable_parameter_count_matches_the_formula_and_is_printed(arch, config, capsys):
    model = tiny_model(arch)
    expected = expected_parameter_count(model, config)
    peft_model = peft.get_peft_model(model, config)
    trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == expected
    peft_model.print_trainable_parameters()
    assert f"trainable params: {expected:,}" in capsys.readouterr().out


def test_merge_is_refused_and_unload_restores_the_plain_model():
    model = tiny_model("llama")
    base = model(input_ids=IDS).logits
    peft_model = trained()
    with pytest.raises(ValueError, match="cannot be merged"):
        peft_model.merge_and_unload()
    plain = peft_model.unload()
    assert not any(isinstance(m, paratune.ParaLayer) for m in plain.modules())
    assert torch.equal(plain(input_ids=IDS).logits, base)


def test_registration_is_in_place_and_idempotent():
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    from paratune.para.peft import register

    register()  # a second call is a no-op, not a "already registered" error
    assert PeftType("PARA") is PeftType.PARA
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PARA] is paratune.ParaModel
    assert isinstance(peft.PeftConfig.from_peft_type(peft_type="PARA"), ParaConfig) if hasattr(
        peft.PeftConfig, "from_peft_type") else True


def test_registration_failure_is_loud(monkeypatch):
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    from paratune.para import peft as registration

    monkeypatch.setitem(PEFT_TYPE_TO_TUNER_MAPPING, PeftType.PARA, object)
    monkeypatch.setattr("peft.utils.register_peft_method", lambda **kwargs: None)
    with pytest.raises(registration.PeftRegistrationError, match="tuner class registered"):
        registration.register()


def test_decoder_layers_are_found_for_gpt2():
    name, layers = decoder_layers(tiny_model("gpt2"))
    assert name == "transformer.h" and len(layers) == 2
