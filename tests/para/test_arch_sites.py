"""What each target scales, checked against the base model's own weights and transformers' own layout code."""

from collections import OrderedDict

import peft
import pytest
import torch
import transformers
from torch import nn

from paratune import ParaConfig, ParaLayer
from paratune.para.arch import Site, decoder_layers, place_delta, resolve_sites
from tests.tiny_models import ARCHS, VOCAB, scaler_places_interleaved, tiny_model, tiny_targets

IDS = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


def is_norm(module):
    return not hasattr(module, "in_features") and not hasattr(module, "nf")


def constant_adapter(arch, targets, make_delta):
    """A PARA model whose deltas do not depend on the prompt: identity activation, down = 0 with bias e_0, and
    up's first column = the deltas ``make_delta(layer, target, site)``. Returns (model, {(layer, target): delta})."""
    model = peft.get_peft_model(tiny_model(arch), ParaConfig(targets=targets, r=2, activation="identity",
                                                             pooling="mean")).eval()
    deltas = {}
    with torch.no_grad():
        for para in (m for m in model.modules() if isinstance(m, ParaLayer)):
            generator = para.generators["default"]
            generator.down.weight.zero_()
            generator.down.bias.zero_()
            generator.down.bias[0] = 1.0
            column = []
            for target in generator.widths:
                delta = make_delta(para.layer_index, target, para.sites["default"][target])
                deltas[(para.layer_index, target)] = delta
                column.append(delta)
            generator.up.weight.zero_()
            generator.up.weight[:, 0] = torch.cat(column)
    return model, deltas


def reweight(layer, site, delta):
    """Scale the weights the site names by 1 + delta: a projection's output rows (and bias) or input columns,
    or a q/k norm's weight (a per-head norm's weight is shared by the heads: delta must repeat per head)."""
    module = layer.get_submodule(site.module)
    scale = 1 + delta
    index = site.indices()
    conv1d = hasattr(module, "nf")
    if is_norm(module):
        width = module.weight.numel()
        assert torch.equal(scale, scale[:width].repeat(site.width // width))
        module.weight.mul_(scale[:width])
    elif site.side == "output":
        if conv1d:
            module.weight[:, index] *= scale
        else:
            module.weight[index] *= scale[:, None]
        if module.bias is not None:
            module.bias[index] *= scale
    elif conv1d:
        module.weight[index] *= scale[:, None]
    else:
        module.weight[:, index] *= scale


def delta_for(layer_index, target, site):
    generator = torch.Generator().manual_seed(10 * layer_index + len(target) + 3 * ("k" in target))
    if site.module.endswith("_norm"):
        head_dim = 8  # a per-head norm's weight is shared by its heads: repeat one head's delta
        one = torch.randn(head_dim, generator=generator) * 0.5
        return one.repeat(site.width // head_dim)
    return torch.randn(site.width, generator=generator) * 0.5


@pytest.mark.parametrize("arch", ARCHS)
def test_scaling_equals_reweighting_the_targeted_weights(arch):
    """Each target scales exactly the features its site names: with prompt-independent deltas, PARA's logits
    equal those of the base model whose named weight rows (outputs) or columns (down's input) are multiplied by
    1 + delta."""
    targets = tiny_targets(arch)
    model, deltas = constant_adapter(arch, targets, delta_for)
    reference = tiny_model(arch)
    base = reference(IDS).logits
    _, layers = decoder_layers(reference)
    with torch.no_grad():
        for (index, target), delta in deltas.items():
            site = resolve_sites(reference, layers[index], [target])[target]
            reweight(layers[index], site, delta)
    with torch.no_grad():
        got = model(IDS).logits
        expected = reference(IDS).logits
    assert not torch.allclose(got, base, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ----- q and k after their norm -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, module", [("qwen3", "q_norm"), ("olmo2", "q_norm")])
def test_q_and_k_scale_the_norm_output(arch, module):
    model = tiny_model(arch)
    _, layers = decoder_layers(model)
    sites = resolve_sites(model, layers[0], ["q", "k"])
    assert sites["q"] == Site("self_attn.q_norm", "output", 0, 32, features=32)
    assert sites["k"] == Site("self_attn.k_norm", "output", 0, 16, features=16)


def test_gemma3_q_stays_on_the_projection():
    """Gemma3 normalises (B, heads, T, head_dim) tensors, a layout the scaler's per-head view does not fit."""
    model = tiny_model("gemma3")
    _, layers = decoder_layers(model)
    assert resolve_sites(model, layers[0], ["q"])["q"].module == "self_attn.q_proj"


def per_head(values, head_dim=8):
    return torch.tensor(values, dtype=torch.float32).repeat_interleave(head_dim)


@pytest.mark.parametrize("arch", ["qwen3", "olmo2"])
def test_a_per_head_constant_q_scale_acts_like_the_same_k_scale(arch):
    """Scaling query head h by c_h multiplies that head's attention scores by c_h, exactly as scaling the key head
    it reads (GQA: 4 query heads over 2 kv heads, kv head g serves query heads 2g and 2g + 1) does. So a
    per-head-constant q delta changes the outputs (on q_proj's output Qwen3's per-head norm would remove it) and
    lands on the right heads."""
    q_delta = per_head([0.5, 0.5, -0.4, -0.4])
    k_delta = per_head([0.5, -0.4])
    base = tiny_model(arch)(IDS).logits
    q_model, _ = constant_adapter(arch, ["q"], lambda i, t, site: q_delta)
    k_model, _ = constant_adapter(arch, ["k"], lambda i, t, site: k_delta)
    with torch.no_grad():
        q_logits, k_logits = q_model(IDS).logits, k_model(IDS).logits
    assert not torch.allclose(q_logits, base, atol=1e-3)
    torch.testing.assert_close(q_logits, k_logits, atol=1e-5, rtol=1e-5)


def test_a_per_head_constant_scale_of_q_proj_is_normalised_away_on_qwen3():
    """Why q moved: Qwen3's per-head RMSNorm undoes a per-head-constant scale of q_proj's output."""
    model = tiny_model("qwen3")
    base = model(IDS).logits
    with torch.no_grad():
        for layer in decoder_layers(model)[1]:
            layer.self_attn.q_proj.weight.mul_(1 + per_head([0.5, 0.5, -0.4, -0.4])[:, None])
        torch.testing.assert_close(model(IDS).logits, base, atol=1e-5, rtol=1e-5)


# ----- fused q/k/v layouts, read back through transformers' own code ------------------------------------------
def fused_features(arch):
    model = tiny_model(arch)
    _, layers = decoder_layers(model)
    return model, layers[0]


def sites_of(arch):
    """The q/k/v sites as resolved, bypassing the scaler check (the layout is what is under test here)."""
    from paratune.para import arch as arch_module

    model, layer = fused_features(arch)
    config = model.config
    return model, layer, {t: arch_module.ARCHITECTURES[config.model_type][t](layer, config) for t in ("q", "k", "v")}


@pytest.mark.parametrize("arch", ["bloom", "falcon", "falcon_new", "falcon_old"])
def test_fused_qkv_layout_matches_the_models_own_split(arch):
    """Feed the model's split function (Bloom ``_reshape``, Falcon ``_split_heads``) the feature indices and read
    which ones it calls q, k, v (heads-major, as the generator's vector is laid out)."""
    if arch == "falcon_old":  # Falcon without multi-query, old architecture: [heads, 3, head_dim]
        config = transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           multi_query=False)
        model = transformers.FalconForCausalLM(config)
        from paratune.para import arch as arch_module

        layer = model.transformer.h[0]
        sites = {t: arch_module.ARCHITECTURES["falcon"][t](layer, config) for t in ("q", "k", "v")}
    else:
        model, layer, sites = sites_of(arch)
    attention = layer.self_attention
    features = attention.query_key_value.out_features
    fused = torch.arange(features, dtype=torch.float32)[None, None]
    split = attention._reshape(fused) if arch == "bloom" else attention._split_heads(fused)
    if arch == "bloom":  # (B, heads, T, head_dim)
        split = [x.transpose(1, 2) for x in split]
    for target, tensor in zip(("q", "k", "v"), split):
        tensor = tensor[0, 0]  # (heads, head_dim) at the one position
        if arch == "falcon_new" and target != "q":  # k/v broadcast to each group's query heads
            tensor = tensor[:: model.config.num_attention_heads // model.config.num_kv_heads]
        assert torch.equal(tensor.reshape(-1).long(), sites[target].indices()), target
        assert sites[target].features in (None, features)
    covered = torch.cat([sites[t].indices() for t in ("q", "k", "v")])
    assert torch.equal(covered.sort().values, torch.arange(features))


def test_gpt_neox_layout_matches_the_query_key_value_entering_attention():
    """GPT-NeoX splits inside forward (view(..., heads, 3 * head_dim).chunk(3)): replace query_key_value's output
    by its feature indices and capture q, k, v where they enter attention (position 0: rotary is the identity)."""
    captured = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        if not captured:  # layer 0's, the hooked one
            captured.update(q=query, k=key, v=value)
        return torch.zeros_like(query).transpose(1, 2), None

    transformers.AttentionInterface.register("para_capture", capture)
    model, layer, sites = sites_of("gpt_neox")
    model.set_attn_implementation("para_capture")
    features = layer.attention.query_key_value.out_features
    handle = layer.attention.query_key_value.register_forward_hook(
        lambda m, a, out: torch.arange(features, dtype=out.dtype).expand_as(out).clone())
    with torch.no_grad():
        model(torch.tensor([[5]]))
    handle.remove()
    for target in ("q", "k", "v"):
        got = captured[target][0, :, 0, :].reshape(-1).long()  # (B, heads, T, head_dim) -> heads-major
        assert torch.equal(got, sites[target].indices()), target


def test_place_delta_writes_interleaved_blocks_and_keeps_other_targets():
    q = Site("qkv", "output", 0, 8, features=24, block=4, stride=12)
    v = Site("qkv", "output", 8, 8, features=24, block=4, stride=12)
    full = place_delta(q, torch.arange(1.0, 9.0)[None], 24)
    full = place_delta(v, -torch.arange(1.0, 9.0)[None], 24, previous=full)
    expected = torch.tensor([1, 2, 3, 4, 0, 0, 0, 0, -1, -2, -3, -4, 5, 6, 7, 8, 0, 0, 0, 0, -5, -6, -7, -8.0])
    assert torch.equal(full[0], expected)


def test_interleaved_qkv_is_scaled_or_refused_never_misplaced():
    """The scaler places interleaved sites as arch describes them, or PARA refuses the targets and says why."""
    if scaler_places_interleaved():
        peft.get_peft_model(tiny_model("gpt_neox"), ParaConfig(targets=["q", "k", "v"]))
    else:
        with pytest.raises(ValueError, match="interleaves q, k and v per head"):
            peft.get_peft_model(tiny_model("gpt_neox"), ParaConfig(targets=["q", "v"]))


# ----- families and refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, expected", [
    ("starcoder2", {"up": "mlp.c_fc", "down": "mlp.c_proj", "o": "self_attn.o_proj"}),
    ("gpt_neox", {"o": "attention.dense", "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"}),
    ("falcon", {"q": "self_attention.query_key_value", "o": "self_attention.dense", "up": "mlp.dense_h_to_4h"}),
    ("opt", {"q": "self_attn.q_proj", "o": "self_attn.out_proj"}),
    ("bloom", {"o": "self_attention.dense", "up": "mlp.dense_h_to_4h", "down": "mlp.dense_4h_to_h"}),
    ("mpt", {"q": "attn.Wqkv", "o": "attn.out_proj", "up": "ffn.up_proj", "down": "ffn.down_proj"}),
    ("phi3", {"gate": "mlp.gate_up_proj", "up": "mlp.gate_up_proj", "o": "self_attn.o_proj"}),
    ("mixtral", {"q": "self_attn.q_proj", "o": "self_attn.o_proj"}),
])
def test_sites_are_found_structurally(arch, expected):
    model = tiny_model(arch)
    _, layers = decoder_layers(model)
    sites = resolve_sites(model, layers[1], list(expected))
    assert {t: s.module for t, s in sites.items()} == expected
    if "down" in sites:
        assert sites["down"].side == "input"


def test_mixtral_ffn_targets_are_refused_naming_the_fused_experts():
    with pytest.raises(ValueError) as error:
        peft.get_peft_model(tiny_model("mixtral"), ParaConfig(targets=["q", "up"]))
    message = str(error.value)
    assert "MixtralForCausalLM" in message and "'mixtral'" in message and "fused 3-D parameters" in message
    assert "available: ['q', 'k', 'v', 'o']" in message


def test_qwen2_moe_up_is_the_shared_experts_when_available():
    model = tiny_model("qwen2_moe")
    _, layers = decoder_layers(model)
    if "up" in tiny_targets("qwen2_moe"):
        assert resolve_sites(model, layers[0], ["up"])["up"].module == "mlp.shared_expert.up_proj"
    else:  # the MoE block runs it on (batch * positions, features) tensors the scaler cannot address yet
        with pytest.raises(ValueError, match=r"runs mlp.shared_expert.up_proj on \(batch \* positions"):
            resolve_sites(model, layers[0], ["up"])


def test_unsupported_model_names_its_class_and_the_families():
    config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4)
    with pytest.raises(ValueError) as error:
        peft.get_peft_model(transformers.MambaForCausalLM(config), ParaConfig())
    message = str(error.value)
    assert message.startswith("PARA does not support MambaForCausalLM (model_type='mamba')")
    assert "no attention module" in message and "Llama" in message and "gpt_neox" in message and "phi3" in message


# ----- decoder layers -----------------------------------------------------------------------------------------
def with_decoy(model, drop_no_split=False):
    """Register a ModuleList as long as the decoder layers before them (first in named_modules order)."""
    decoy = nn.ModuleList([nn.Linear(4, 4) for _ in range(model.config.num_hidden_layers)])
    model._modules = OrderedDict([("decoy", decoy), *model._modules.items()])
    if drop_no_split:
        model._no_split_modules = None  # e.g. remote-code models: fall back to "holds an attention module"
    return model


@pytest.mark.parametrize("drop_no_split", [False, True])
def test_decoder_layers_skip_a_decoy_module_list_registered_first(drop_no_split):
    model = with_decoy(tiny_model("llama"), drop_no_split)
    assert next(name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)) == "decoy"
    name, layers = decoder_layers(model)
    assert name == "model.layers" and layers is model.model.layers
    base = model(IDS).logits
    peft_model = peft.get_peft_model(model, ParaConfig()).eval()
    assert torch.equal(peft_model(IDS).logits, base)
    assert all(not isinstance(m, ParaLayer) for m in model.decoy.modules())


def test_bloom_slow_but_exact_refuses_the_projections_it_bypasses():
    """With pretraining_tp > 1 and slow_but_exact, Bloom multiplies slices of dense's weight instead of calling it."""
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4, pretraining_tp=2,
                                      slow_but_exact=True)
    model = transformers.BloomForCausalLM(config)
    with pytest.raises(ValueError, match="slow_but_exact=True: that path bypasses"):
        peft.get_peft_model(model, ParaConfig(targets=["o", "up"]))
    peft.get_peft_model(model, ParaConfig(targets=["up"]))  # dense_h_to_4h is still called
