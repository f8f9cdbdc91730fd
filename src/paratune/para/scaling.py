"""Apply per-row scaling vectors to a decoder layer's projections through forward hooks.

This is the only thing PARA does at decode time. ``SiteScaler`` owns the hooks of one decoder layer and the
current scale tensors (one per hooked module, shape (B, 1, features)); whoever computed the vectors (the PEFT
``ParaLayer`` at prefill, or the serving engine for its batch rows) hands them over with ``set``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .arch import Site, module_features


def module_scales(
    layer: nn.Module, sites: dict[str, Site], vectors: dict[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """{target: (B, width)} -> {module path: (B, 1, features)}; the untargeted slices of a fused
    projection (e.g. k inside GPT-2's c_attn) get exactly 1."""
    scales: dict[str, torch.Tensor] = {}
    for target, vector in vectors.items():
        site = sites[target]
        features = module_features(layer.get_submodule(site.module), site.side)
        if site.start == 0 and site.width == features:
            scale = vector
        else:
            previous = scales.get(site.module)
            scale = (torch.ones(vector.shape[0], features, dtype=vector.dtype, device=vector.device)
                     if previous is None else previous[:, 0].to(vector.dtype))
            scale = torch.cat([scale[:, : site.start], vector, scale[:, site.start + site.width:]], dim=-1)
        scales[site.module] = scale.to(dtype).unsqueeze(1)
    return scales


class SiteScaler:
    """Forward hooks that multiply projection outputs (or the down-projection input) by per-row scales."""

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
                return output if scale is None else output * scale

            self._hooks[path] = module.register_forward_hook(scale_output)
        else:
            def scale_input(module, args):
                scale = self._scale(path)
                return None if scale is None else (args[0] * scale, *args[1:])

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
