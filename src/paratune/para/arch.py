"""Where PARA's vectors act inside each architecture: decoder layers and projection sites.

Discovery is structural, so most decoder-only models in transformers need no per-model code:

* decoder layers: the ``ModuleList`` of ``config.num_hidden_layers`` modules whose elements are the model's decoder
  layers (their class is in ``model._no_split_modules``, or they contain an attention module); a model may hold
  other lists of the same length;
* q, k, v, o: projections inside the layer's attention module (the first submodule whose class name contains
  "Attention"), found by leaf name: ``q_proj``/``query``, ``k_proj``/``key``, ``v_proj``/``value``,
  ``o_proj``/``out_proj``/``dense``/``c_proj``. When the attention normalises q or k after the projection (a
  ``q_norm``/``k_norm`` child: Qwen3 per head, OLMo2 over the full width), q and k scale the norm's *output*: a
  scale of ``q_proj``'s output would be partly (a per-head constant: entirely) normalised away;
* up, gate, down: projections of the layer outside its attention module: ``up_proj``/``c_fc``/``fc1``/
  ``dense_h_to_4h``/``fc_in`` (a non-gated FFN's first projection is ``up``), ``gate_proj``, and the input of
  ``down_proj``/``c_proj``/``fc2``/``dense_4h_to_h``/``fc_out``; a fused ``gate_up_proj`` is ``[gate | up]`` (Phi-3,
  GLM: ``chunk(2)``). Mixture-of-experts layers: transformers 5 stores the routed experts as fused 3-D parameters
  (``experts.gate_up_proj`` of shape (experts, 2 * ffn, hidden)) with no module per expert to hook, so up, gate and
  down mean the *shared* expert's projections (Qwen2-MoE ``mlp.shared_expert``) and are refused where there is
  none (Mixtral).

Fused q/k/v projections do not show their layout in the module structure, so each family with one has an explicit
map (``ARCHITECTURES``, consulted before the structural search, target by target). To support another family:

    from paratune.para.arch import Site, register_architecture
    register_architecture("my_model_type", {"q": lambda layer, cfg: Site("attn.qkv", "output", 0, cfg.hidden_size), ...})

A target resolves to a ``Site``: a module path inside the decoder layer, whether the vector scales that module's
output or its input, and where the target's ``width`` features lie in that tensor's last dimension: the slice
[start, start + width), or, for a per-head interleaved fused projection (GPT-NeoX and Bloom lay ``query_key_value``
out as [heads, 3, head_dim]), ``width // block`` blocks of ``block`` features, the i-th at ``start + i * stride``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch import nn

from .config import TARGETS
from .scaling import SiteScaler, module_scales
from .site import Site, UnsupportedModelError, module_features, place_delta  # noqa: F401 (re-exported)


SiteResolver = Callable[[nn.Module, object], Site]

# Leaf names, by target, looked up inside the attention module (q, k, v, o) or outside it (up, gate, down).
_ATTENTION_NAMES = {
    "q": ("q_proj", "query"),
    "k": ("k_proj", "key"),
    "v": ("v_proj", "value"),
    "o": ("o_proj", "out_proj", "dense", "c_proj"),
}
_FFN_NAMES = {
    "up": ("up_proj", "c_fc", "fc1", "dense_h_to_4h", "fc_in"),
    "gate": ("gate_proj",),
    "down": ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out"),
}
_SIDES = {"down": "input"}
_FUSED_GATE_UP = "gate_up_proj"  # [gate | up]: Phi3MLP, GlmMLP, ... split it with chunk(2)
_QK_NORMS = {"q": ("q_norm", "num_attention_heads"), "k": ("k_norm", "num_key_value_heads")}

# transformers modeling modules (``transformers.models.<name>``) whose attention applies a per-head q_norm/k_norm
# to a tensor that is not (B, T, heads, head_dim): (B, heads, T, head_dim) after a transpose (Gemma3, EXAONE-4,
# ...) or (B * T, heads, head_dim) (Chameleon). The scaler views a per-head delta as (B, 1, heads, head_dim), which
# does not fit those, so their q and k stay on the projection (a per-head-constant scale there is normalised away).
# Audited from the transformers 5.23 sources (every ``self.q_norm(query_states)`` whose input was transposed).
_QK_NORM_NOT_BTHD = frozenset({
    "apertus", "chameleon", "embedding_gemma2", "esmfold2", "exaone4", "exaone4_5", "exaone_moe", "gemma3", "hy_v3",
    "kolibri1", "mllama", "muse_glimmer_assistant", "neomme", "sapiens2", "t5gemma2",
})


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _contiguous_qkv(path: str, sizes: Callable[[object], tuple[int, int, int]], target: str) -> SiteResolver:
    """A fused projection whose output is [q | k | v] with the given widths."""
    def resolve(layer, cfg):
        q, k, v = sizes(cfg)
        start, width = {"q": (0, q), "k": (q, k), "v": (q + k, v)}[target]
        return Site(path, "output", start, width)

    return resolve


def _per_head_qkv(path: str, target: str) -> SiteResolver:
    """A fused projection whose output is [heads, 3, head_dim]: GPT-NeoX (``view(..., heads, 3 * head_dim)`` then
    ``chunk(3)``), Bloom and Falcon without multi-query (``view(..., heads, 3, head_dim)``)."""
    def resolve(layer, cfg):
        d, heads = _head_dim(cfg), cfg.num_attention_heads
        index = ("q", "k", "v").index(target)
        return Site(path, "output", index * d, heads * d, features=3 * heads * d, block=d, stride=3 * d)

    return resolve


def _falcon_qkv(target: str) -> SiteResolver:
    """Falcon's ``query_key_value``, laid out as ``FalconAttention._split_heads`` reads it."""
    def resolve(layer, cfg):
        path = "self_attention.query_key_value"
        d, heads = _head_dim(cfg), cfg.num_attention_heads
        if cfg.new_decoder_architecture:
            # [kv groups, heads / groups + 2, head_dim]: each group's query heads, then its k, then its v.
            groups = cfg.num_kv_heads
            per_group = heads // groups
            stride = (per_group + 2) * d
            start, block = {"q": (0, per_group * d), "k": (per_group * d, d), "v": ((per_group + 1) * d, d)}[target]
            width = heads * d if target == "q" else groups * d
            return Site(path, "output", start, width, features=groups * stride, block=block, stride=stride)
        if cfg.multi_query:  # [q (heads * head_dim) | k (head_dim) | v (head_dim)]
            return _contiguous_qkv(path, lambda c: (heads * d, d, d), target)(layer, cfg)
        return _per_head_qkv(path, target)(layer, cfg)

    return resolve


def _bloom_unhooked(target: str) -> SiteResolver:
    """Bloom with pretraining_tp > 1 and slow_but_exact multiplies slices of ``dense``'s weight itself instead of
    calling the module, so no hook on it would run."""
    def resolve(layer, cfg):
        if cfg.pretraining_tp > 1 and cfg.slow_but_exact:
            raise UnsupportedModelError(
                f"Bloom with pretraining_tp={cfg.pretraining_tp} and slow_but_exact=True: that path bypasses the "
                "projection module PARA hooks"
            )
        return _structural(layer, cfg, target)

    return resolve


def _flattened(target: str, who: str) -> SiteResolver:
    """A projection that runs on (batch * positions, features) tensors: only where the scaler can address rows
    of those (a per-row scale is (batch, 1, features))."""
    def resolve(layer, cfg):
        _require_flattened_rows(who)
        return _structural(layer, cfg, target)

    return resolve


def _gpt_qkv_sizes(cfg):
    return cfg.hidden_size, cfg.hidden_size, cfg.hidden_size


def _phi3_qkv_sizes(cfg):
    return (cfg.num_attention_heads * _head_dim(cfg), cfg.num_key_value_heads * _head_dim(cfg),
            cfg.num_key_value_heads * _head_dim(cfg))


# Explicit per-family sites, for what the module structure does not show (the layout of a fused q/k/v projection);
# targets a family does not list here are found structurally.
ARCHITECTURES: dict[str, dict[str, SiteResolver]] = {
    # c_attn is a Conv1D whose output is [q | k | v], each hidden_size wide.
    "gpt2": {t: _contiguous_qkv("attn.c_attn", _gpt_qkv_sizes, t) for t in ("q", "k", "v")},
    # qkv_proj output is [q (heads * head_dim) | k (kv_heads * head_dim) | v (kv_heads * head_dim)].
    "phi3": {t: _contiguous_qkv("self_attn.qkv_proj", _phi3_qkv_sizes, t) for t in ("q", "k", "v")},
    # MptAttention: Wqkv(x).chunk(3, dim=2).
    "mpt": {t: _contiguous_qkv("attn.Wqkv", _gpt_qkv_sizes, t) for t in ("q", "k", "v")},
    "gpt_neox": {t: _per_head_qkv("attention.query_key_value", t) for t in ("q", "k", "v")},
    "bloom": {**{t: _per_head_qkv("self_attention.query_key_value", t) for t in ("q", "k", "v")},
              "o": _bloom_unhooked("o"), "down": _bloom_unhooked("down")},
    "falcon": {t: _falcon_qkv(t) for t in ("q", "k", "v")},
    # OPTDecoderLayer flattens the hidden states to (B * T, hidden) before fc1/fc2.
    "opt": {t: _flattened(t, "OPT runs fc1/fc2") for t in ("up", "down")},
}


def register_architecture(model_type: str, sites: dict[str, SiteResolver]) -> None:
    """Add (or replace) the explicit sites of a ``config.model_type``; targets it does not list are found
    structurally (a resolver may raise ``UnsupportedModelError`` to refuse a target)."""
    unknown = set(sites) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; allowed: {list(TARGETS)}")
    ARCHITECTURES[model_type] = dict(sites)


def supported_families() -> str:
    return (
        "decoder layers whose attention holds q_proj/k_proj/v_proj (or query/key/value) and o_proj/out_proj/dense/"
        "c_proj, and whose FFN holds up_proj/c_fc/fc1/dense_h_to_4h, gate_proj or gate_up_proj, and down_proj/c_proj/"
        "fc2/dense_4h_to_h (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Gemma3, OLMo2, Starcoder2, OPT, Qwen2-MoE "
        "shared expert, ...), and fused q/k/v layouts for " + ", ".join(sorted(ARCHITECTURES))
    )


def _is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (hasattr(module, "nf") and hasattr(module, "weight"))


def _model_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no transformers config; PARA supports {supported_families()}"
        )
    return getattr(config, "get_text_config", lambda: config)()


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the decoder layers: of the lists as long as config.num_hidden_layers, the first
    whose elements are decoder layers (class in ``_no_split_modules``, else holding an attention module)."""
    config = _model_config(model)
    n_layers = getattr(config, "num_hidden_layers", None)
    candidates = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers
    ]
    if not candidates:
        raise UnsupportedModelError(
            f"PARA found no decoder layers in {type(model).__name__} (no ModuleList of num_hidden_layers="
            f"{n_layers} modules); supported: {supported_families()}"
        )
    no_split = set(getattr(model, "_no_split_modules", None) or ())

    def rank(candidate):
        first = candidate[1][0]
        return type(first).__name__ in no_split, _attention(first) is not None

    return max(candidates, key=rank)  # max keeps the first of equally ranked lists (registration order)


def _ours(name: str) -> bool:
    return ".para." in f".{name}."


def _attention(layer: nn.Module) -> tuple[str, nn.Module] | None:
    """(path, module) of the layer's attention: the first submodule whose class name says so and that holds a
    projection."""
    for name, module in layer.named_modules():
        if name and not _ours(name) and "Attention" in type(module).__name__ \
                and any(_is_projection(m) for m in module.modules()):
            return name, module
    return None


def _fused_experts(layer: nn.Module) -> list[str]:
    """Paths of modules holding routed experts as fused 3-D parameters (transformers 5 MoE blocks)."""
    return [
        name for name, module in layer.named_modules()
        if not _ours(name) and "expert" in type(module).__name__.lower()
        and any(p.dim() == 3 for p in module.parameters(recurse=False))
    ]


def _projections(layer: nn.Module, leaves: tuple[str, ...], inside: str | None, outside: str | None) -> list[str]:
    """Paths of projections named one of ``leaves``: under ``inside`` when given, never under ``outside``."""
    found = []
    for name, module in layer.named_modules():
        if _ours(name) or name.split(".")[-1] not in leaves or not _is_projection(module):
            continue
        if inside is not None and not name.startswith(inside + "."):
            continue
        if outside is not None and name.startswith(outside + "."):
            continue
        found.append(name)
    return found


def _one(found: list[str], what: str) -> str:
    if len(found) != 1:
        raise UnsupportedModelError(
            f"{'no' if not found else f'{len(found)} ({found})'} {what} in its decoder layer"
        )
    return found[0]


def _structural(layer: nn.Module, config, target: str) -> Site:
    """Find ``target`` by the module structure of one decoder layer (see the module docstring)."""
    attention = _attention(layer)
    if target in _ATTENTION_NAMES:
        if attention is None:
            raise UnsupportedModelError("no attention module (a submodule whose class name contains 'Attention')")
        attn_path, attn = attention
        leaves = _ATTENTION_NAMES[target]
        path = _one(_projections(layer, leaves, inside=attn_path, outside=None),
                    f"projection named {'/'.join(leaves)} inside {attn_path} ({type(attn).__name__})")
        features = module_features(layer.get_submodule(path), "output")
        if target in _QK_NORMS:
            norm_site = _qk_norm_site(attn_path, attn, config, target, features)
            if norm_site is not None:
                return norm_site
        return Site(path, "output", 0, features)
    # FFN targets: outside the attention module.
    outside = attention[0] if attention is not None else None
    side = _SIDES.get(target, "output")
    leaves = _FFN_NAMES[target]
    found = _projections(layer, leaves, inside=None, outside=outside)
    if not found and target in ("gate", "up"):
        fused = _projections(layer, (_FUSED_GATE_UP,), inside=None, outside=outside)
        if len(fused) == 1:
            half = module_features(layer.get_submodule(fused[0]), "output") // 2
            return Site(fused[0], "output", 0 if target == "gate" else half, half)
    if not found and _fused_experts(layer):
        experts = _fused_experts(layer)
        raise UnsupportedModelError(
            f"no {'/'.join(leaves)} projection: the routed experts ({experts}) are fused 3-D parameters with no "
            "module per expert to hook, and the layer has no shared expert holding one"
        )
    path = _one(found, f"projection named {'/'.join(leaves)} outside the attention module")
    if _fused_experts(layer):  # MoE blocks flatten the tokens for routing, the shared expert included
        _require_flattened_rows(f"the mixture-of-experts block runs {path}")
    return Site(path, side, 0, module_features(layer.get_submodule(path), side))


def _qk_norm_site(attn_path: str, attn: nn.Module, config, target: str, proj_features: int) -> Site | None:
    """The q_norm/k_norm output as the site of q/k when the attention normalises them after the projection, in a
    layout the scaler can broadcast to: (B, T, width) for a full-width norm (OLMo2), (B, T, heads, head_dim) for a
    per-head one (Qwen3). None: no such norm, or a layout that does not fit (the projection stays the site)."""
    name, heads_attr = _QK_NORMS[target]
    norm = getattr(attn, name, None)
    weight = getattr(norm, "weight", None)
    if not isinstance(norm, nn.Module) or not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    width = weight.numel()
    heads = getattr(config, heads_attr, None) or config.num_attention_heads
    per_head = width == _head_dim(config)
    if per_head and heads == 1:
        return None  # full width or (B, T, 1, head_dim)? The two need different broadcasts; keep the projection.
    if width == proj_features:
        features = width  # normalised over the full width (OLMo2): output (B, T, heads * head_dim)
    elif per_head and _transformers_module(attn) not in _QK_NORM_NOT_BTHD:
        features = heads * width  # per head (Qwen3): output (B, T, heads, head_dim)
    else:
        return None
    return Site(f"{attn_path}.{name}", "output", 0, features, features=features)


def _transformers_module(module: nn.Module) -> str:
    """``gemma3`` for a class defined in transformers.models.gemma3.modeling_gemma3."""
    parts = type(module).__module__.split(".")
    return parts[-2] if len(parts) >= 2 and parts[0] == "transformers" else ""


def resolve_sites(model: nn.Module, layer: nn.Module, targets: list[str]) -> dict[str, Site]:
    """target -> Site inside one decoder layer, or UnsupportedModelError naming the class, the model type, why,
    the targets this model does offer, and the supported families."""
    config = _model_config(model)
    sites, errors = {}, {}
    for target in targets:
        try:
            sites[target] = _resolve(layer, config, target)
        except UnsupportedModelError as error:
            errors[target] = str(error)
    if errors:
        available = [t for t in TARGETS if t in sites or (t not in errors and _resolves(layer, config, t))]
        reasons = "; ".join(f"{t!r}: {why}" for t, why in errors.items())
        if available:
            lead = (f"PARA target {', '.join(map(repr, errors))} is not available for {type(model).__name__} "
                    f"(model_type={getattr(config, 'model_type', None)!r}); available: {available}")
        else:
            lead = f"PARA does not support {type(model).__name__} (model_type={getattr(config, 'model_type', None)!r})"
        raise UnsupportedModelError(
            f"{lead}. {reasons}. Supported: {supported_families()}. "
            "Add a family with paratune.para.arch.register_architecture()."
        )
    return sites


def _resolve(layer: nn.Module, config, target: str) -> Site:
    explicit = ARCHITECTURES.get(getattr(config, "model_type", None), {})
    site = explicit[target](layer, config) if target in explicit else _structural(layer, config, target)
    if site.block is not None:
        _check_scaler_places(site)
    return site


def _resolves(layer: nn.Module, config, target: str) -> bool:
    try:
        _resolve(layer, config, target)
        return True
    except UnsupportedModelError:
        return False


@lru_cache(maxsize=None)
def _check_scaler_places(site: Site) -> None:
    """An interleaved site is only as right as the scaler's placement of it: ask ``module_scales`` to place a
    probe vector and compare with ``place_delta`` (once per site), so a scaler that only knows contiguous slices
    refuses these models instead of scaling the wrong features."""
    probe = torch.arange(1, site.width + 1, dtype=torch.float32)[None]
    try:
        placed = module_scales(nn.Module(), {"t": site}, {"t": probe}, torch.float32)[site.module][:, 0]
    except Exception as error:  # noqa: BLE001 - any failure means the scaler cannot place this site
        placed = error
    if not isinstance(placed, torch.Tensor) or not torch.equal(placed, place_delta(site, probe, site.features)):
        raise UnsupportedModelError(
            f"{site.module} interleaves q, k and v per head, and paratune.para.scaling.module_scales does not place "
            "interleaved sites (Site.block/stride, see arch.place_delta)"
        )


def _require_flattened_rows(who: str) -> None:
    if not _scaler_scales_flattened_rows():
        raise UnsupportedModelError(
            f"{who} on (batch * positions, features) tensors, and paratune.para.scaling does not apply a per-row "
            "scale (batch, 1, features) to those (it would need to view them as (batch, positions, features))"
        )


@lru_cache(maxsize=1)
def _scaler_scales_flattened_rows() -> bool:
    """Whether SiteScaler's hooks scale a (batch * positions, features) tensor row by row: hook a stand-in
    module, give it two rows' deltas and feed it 2 x 2 flattened positions."""
    layer = nn.Module()
    layer.proj = nn.Identity()
    scaler = SiteScaler(layer)
    scaler.hook(Site("proj", "output", 0, 3, features=3))
    delta = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    scaler.scales = {"proj": delta[:, None]}
    try:
        out = layer.proj(torch.ones(4, 3))
    except RuntimeError:
        return False
    finally:
        scaler.remove()
    return out.shape == (4, 3) and torch.equal(out, 1 + delta.repeat_interleave(2, dim=0))
