"""Where PARA's vectors act inside each architecture: decoder layers and projection sites.

Most decoder-only models in transformers share Llama's names (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
``up_proj``, ``gate_proj``, ``down_proj``); those are found by name, with no per-model code. Models with
fused projections get a small explicit map below. To support a new family, register its map:

    from paratune.para.arch import Site, register_architecture
    register_architecture("my_model_type", {"q": lambda layer, cfg: Site("attn.qkv", "output", 0, cfg.hidden_size), ...})

A target resolves to a ``Site``: a module path inside the decoder layer, whether the vector scales that
module's output or its input, and the slice [start, start + width) of that tensor's last dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .config import TARGETS


@dataclass(frozen=True)
class Site:
    module: str  # path of the projection inside the decoder layer
    side: str  # "output": scale the module's output; "input": scale its first input
    start: int  # offset of this target inside the last dimension (fused projections)
    width: int


SiteResolver = Callable[[nn.Module, object], Site]

# Llama-style names: target -> (leaf module name, side).
_LLAMA_NAMES = {
    "q": ("q_proj", "output"),
    "k": ("k_proj", "output"),
    "v": ("v_proj", "output"),
    "o": ("o_proj", "output"),
    "up": ("up_proj", "output"),
    "gate": ("gate_proj", "output"),
    "down": ("down_proj", "input"),
}


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _gpt2_qkv(index: int) -> SiteResolver:
    # c_attn is a Conv1D whose output is [q | k | v], each hidden_size wide.
    return lambda layer, cfg: Site("attn.c_attn", "output", index * cfg.hidden_size, cfg.hidden_size)


def _phi3_qkv(target: str) -> SiteResolver:
    # qkv_proj output is [q (heads * head_dim) | k (kv_heads * head_dim) | v (kv_heads * head_dim)].
    def resolve(layer, cfg):
        q = cfg.num_attention_heads * _head_dim(cfg)
        kv = cfg.num_key_value_heads * _head_dim(cfg)
        start, width = {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[target]
        return Site("self_attn.qkv_proj", "output", start, width)

    return resolve


def _linear_out(path: str, side: str = "output", offset_halves: int = 0, halves: int = 1) -> SiteResolver:
    def resolve(layer, cfg):
        module = layer.get_submodule(path)
        total = module_features(module, side)
        width = total // halves
        return Site(path, side, offset_halves * width, width)

    return resolve


ARCHITECTURES: dict[str, dict[str, SiteResolver]] = {
    "gpt2": {
        "q": _gpt2_qkv(0),
        "k": _gpt2_qkv(1),
        "v": _gpt2_qkv(2),
        "o": _linear_out("attn.c_proj"),
        "up": _linear_out("mlp.c_fc"),  # GPT-2's MLP is not gated: c_fc is the up-projection
        "down": _linear_out("mlp.c_proj", side="input"),
    },
    "phi3": {
        "q": _phi3_qkv("q"),
        "k": _phi3_qkv("k"),
        "v": _phi3_qkv("v"),
        "o": _linear_out("self_attn.o_proj"),
        # gate_up_proj output is [gate | up] (Phi3MLP chunks it in this order).
        "gate": _linear_out("mlp.gate_up_proj", offset_halves=0, halves=2),
        "up": _linear_out("mlp.gate_up_proj", offset_halves=1, halves=2),
        "down": _linear_out("mlp.down_proj", side="input"),
    },
}


def register_architecture(model_type: str, sites: dict[str, SiteResolver]) -> None:
    """Add (or replace) the explicit site map of a ``config.model_type``."""
    unknown = set(sites) - set(TARGETS)
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}; allowed: {list(TARGETS)}")
    ARCHITECTURES[model_type] = dict(sites)


def supported_families() -> str:
    return (
        "models with Llama-style projection names (q_proj, k_proj, v_proj, o_proj, up_proj, gate_proj, down_proj: "
        "Llama, Qwen2, Qwen3, Mistral, Gemma, Gemma2, ...) and explicit maps for "
        + ", ".join(sorted(ARCHITECTURES))
    )


class UnsupportedModelError(ValueError):
    pass


def module_features(module: nn.Module, side: str) -> int:
    if hasattr(module, "in_features"):  # nn.Linear
        return module.out_features if side == "output" else module.in_features
    if hasattr(module, "nf"):  # transformers' Conv1D (GPT-2): weight is (in, out)
        return module.nf if side == "output" else module.weight.shape[0]
    raise UnsupportedModelError(f"cannot read the width of {type(module).__name__}")


def _model_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no transformers config; PARA supports {supported_families()}"
        )
    return getattr(config, "get_text_config", lambda: config)()


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the decoder layers: the first one as long as config.num_hidden_layers."""
    config = _model_config(model)
    n_layers = getattr(config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers:
            return name, module
    raise UnsupportedModelError(
        f"PARA found no decoder layers in {type(model).__name__} (no ModuleList of num_hidden_layers="
        f"{n_layers} modules); supported: {supported_families()}"
    )


def resolve_sites(model: nn.Module, layer: nn.Module, targets: list[str]) -> dict[str, Site]:
    """target -> Site inside one decoder layer, or UnsupportedModelError naming the class and the families."""
    config = _model_config(model)
    explicit = ARCHITECTURES.get(getattr(config, "model_type", None))
    sites = {}
    for target in targets:
        if explicit is not None:
            if target not in explicit:
                raise UnsupportedModelError(
                    f"PARA target {target!r} is not available for {type(model).__name__} "
                    f"(model_type={config.model_type!r}); available: {[t for t in TARGETS if t in explicit]}"
                )
            sites[target] = explicit[target](layer, config)
        else:
            sites[target] = _find_by_name(model, layer, target)
    return sites


def _find_by_name(model: nn.Module, layer: nn.Module, target: str) -> Site:
    leaf, side = _LLAMA_NAMES[target]
    matches = [
        name for name, module in layer.named_modules()
        if name.split(".")[-1] == leaf and ".para." not in f".{name}." and isinstance(module, nn.Linear)
    ]
    if len(matches) != 1:
        found = "no" if not matches else f"{len(matches)} ({matches})"
        raise UnsupportedModelError(
            f"PARA does not support {type(model).__name__} (model_type="
            f"{getattr(_model_config(model), 'model_type', None)!r}) for target {target!r}: {found} nn.Linear "
            f"named {leaf!r} in its decoder layer. Supported: {supported_families()}. "
            "Add a family with paratune.para.arch.register_architecture()."
        )
    module = layer.get_submodule(matches[0])
    return Site(matches[0], side, 0, module_features(module, side))
