"""The engine's hooks on a bare transformers model: per-row PARA/(IA)^3 scaling and per-row LoRA deltas.

The hooks read tensors prepared by the engine (``ModelHooks.tensors``) and never look at adapter names
(vLLM's split between adapter management and the math inside layers). During a prefill the PARA rows'
vectors are computed from the prompt, layer by layer, by ``on_prefill_layer`` and stored for the batch.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..para.arch import decoder_layers
from ..para.scaling import SiteScaler
from .batch import RowTensors


class ModelHooks:
    def __init__(self, model: nn.Module):
        self.model = model
        _, self.layers = decoder_layers(model)
        self.scalers = [SiteScaler(layer) for layer in self.layers]
        self.tensors = RowTensors.empty(len(self.layers))
        # Set by the engine for the duration of a prefill: called with (layer index, hidden states entering it).
        self.on_prefill_layer: Callable[[int, torch.Tensor], None] | None = None
        self._handles = [
            layer.register_forward_pre_hook(self._before_layer(i), with_kwargs=True)
            for i, layer in enumerate(self.layers)
        ]
        self._lora_hooked: set[str] = set()

    def use(self, tensors: RowTensors) -> None:
        self.tensors = tensors
        for scaler, scales in zip(self.scalers, tensors.scales):
            scaler.scales = scales

    def hook_site(self, layer: int, site) -> None:
        self.scalers[layer].hook(site)

    def hook_lora(self, path: str) -> None:
        if path in self._lora_hooked:
            return
        module = self.model.get_submodule(path)

        def add_delta(module, args, output):
            rows = self.tensors.lora.get(path)
            if rows is None:
                return output
            a, b, scaling = rows  # (B, r, in), (B, out, r), (B, 1, 1)
            x = args[0].to(a.dtype)
            delta = torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))
            return output + (delta * scaling).to(output.dtype)

        self._handles.append(module.register_forward_hook(add_delta))
        self._lora_hooked.add(path)

    def _before_layer(self, index: int):
        def hook(module, args, kwargs):
            if self.on_prefill_layer is not None:
                self.on_prefill_layer(index, args[0] if args else kwargs["hidden_states"])

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for scaler in self.scalers:
            scaler.remove()
