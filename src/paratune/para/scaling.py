"""Apply per-row scaling vectors to a decoder layer's projections through forward hooks.

This is the only thing PARA does at decode time. ``SiteScaler`` owns the hooks of one decoder layer and the
current per-row deltas (one tensor per hooked module, shape (B, 1, features)), which the PEFT ``ParaLayer``
computes at prefill and assigns to ``scales``. (The serving engine hooks per-slot delta tables instead, and shares ``module_scales``'s layout and
``paratune.ops``'s arithmetic, ``x + x * delta``, with this module.)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..ops import scaled
from .site import Site, module_features, place_delta


def module_scales(
    layer: nn.Module, sites: dict[str, Site], vectors: dict[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """{target: delta (B, width)} -> {module path: delta (B, 1, features)}; the untargeted features of a fused
    projection (e.g. k inside GPT-2's c_attn, or inside a per-head interleaved query_key_value) get exactly 0."""
    scales: dict[str, torch.Tensor] = {}
    for target, vector in vectors.items():
        site = sites[target]
        features = site.features or module_features(layer.get_submodule(site.module), site.side)
        if site.start == 0 and site.width == features and site.block is None:
            scale = vector
        else:
            previous = scales.get(site.module)
            scale = place_delta(site, vector, features, None if previous is None else previous[:, 0])
        scales[site.module] = scale.to(dtype).unsqueeze(1)
    return scales


def apply_delta(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``x * (1 + delta)`` as ``x + x * delta``; delta (B, 1, features) broadcasts over positions. A module
    whose output keeps a head axis (B, T, H, D), e.g. Qwen3's per-head q_norm, gets delta viewed as (B, 1, H, D);
    one that sees flattened rows (B * T, features), e.g. an MoE block's shared expert, is viewed as (B, T, F)."""
    if x.shape[-1] != delta.shape[-1] and x.dim() == 4:
        delta = delta.view(delta.shape[0], 1, *x.shape[-2:])
    elif x.dim() == 2 and delta.shape[0] > 0 and x.shape[0] % delta.shape[0] == 0:
        return scaled(x.view(delta.shape[0], -1, x.shape[-1]), delta).view_as(x)
    return scaled(x, delta)


class SiteScaler:
    """Forward hooks that scale projection outputs (or the down-projection input) by per-row ``1 + delta``."""

    def __init__(self, layer: nn.Module, enabled: Callable[[], bool] = lambda: True):
        self.layer = layer
        self.enabled = enabled
        self.scales: dict[str, torch.Tensor] | None = None
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def hook(self, site: Site) -> None:
        if site.module in self._hooks:
            return
        module = self.layer.get_submodule(site.module)
        path = site.module
        if site.side == "output":
            def scale_output(module, args, output):
                scale = self._scale(path)
                return output if scale is None else apply_delta(output, scale)

            self._hooks[path] = module.register_forward_hook(scale_output)
        else:
            def scale_input(module, args):
                scale = self._scale(path)
                return None if scale is None else (apply_delta(args[0], scale), *args[1:])

            self._hooks[path] = module.register_forward_pre_hook(scale_input)

    def _scale(self, path: str) -> torch.Tensor | None:
        if self.scales is None or not self.enabled():
            return None
        return self.scales.get(path)

    def remove(self) -> None:
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self.scales = None
