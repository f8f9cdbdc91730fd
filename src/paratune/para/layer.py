"""ParaLayer: the PARA part of one decoder layer (PEFT tuner layer).

It holds one ``VectorGenerator`` per adapter (a ``ModuleDict`` keyed by adapter name, as PEFT tuners do),
computes per-row scaling vectors from the prompt when the model runs a prefill, and multiplies the targeted
projection outputs (or the down-projection input) by them through forward hooks on those projections.
The projections themselves are not replaced (see ``scaling.SiteScaler``), so base weights keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .arch import Site
from .config import ParaConfig
from .generator import VectorGenerator
from .scaling import SiteScaler, module_scales

BASE_ROW = "__base__"  # adapter name of rows that run the base model in a mixed batch (PEFT's convention)


@dataclass
class ForwardState:
    """What the current forward pass asks of every ParaLayer; owned by ParaModel, shared by its layers.

    mode: "compute" (prefill: pool ``pool_mask`` and compute vectors), "reuse" (decode: keep the vectors
    computed at prefill) or "off" (no PARA adapter applies).
    """

    mode: str = "compute"
    pool_mask: torch.Tensor | None = None
    adapter_names: list[str] | None = None  # per row; None = the active adapters for every row
    extra: dict = field(default_factory=dict)


class ParaLayer(nn.Module, BaseTunerLayer):
    adapter_layer_names = ("generators",)
    other_param_names = ("configs",)

    def __init__(self, decoder_layer: nn.Module, layer_index: int, hidden_size: int, state: ForwardState):
        super().__init__()
        self.layer_index = layer_index
        self.hidden_size = hidden_size
        self.generators = nn.ModuleDict()
        self.configs: dict[str, ParaConfig] = {}
        self.sites: dict[str, dict[str, Site]] = {}  # adapter -> target -> site
        self._state = state
        self._active_adapter = []
        self.merged_adapters = []
        # Plain dicts (not ModuleDicts): the decoder layer owns these modules; we only hook them.
        self._decoder_layer = [decoder_layer]
        self.scaler = SiteScaler(decoder_layer, enabled=lambda: not self.disable_adapters and state.mode != "off")
        self._layer_hook = decoder_layer.register_forward_pre_hook(self._before_decoder_layer, with_kwargs=True)

    # ----- adapters -------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: ParaConfig, sites: dict[str, Site]) -> None:
        decoder_layer = self._decoder_layer[0]
        device = next(decoder_layer.parameters()).device
        widths = {target: site.width for target, site in sites.items()}
        generator = VectorGenerator(
            self.hidden_size, config.r, widths, config.pooling, config.activation, config.dropout
        ).to(device)
        self.generators[adapter_name] = generator
        self.configs[adapter_name] = config
        self.sites[adapter_name] = dict(sites)
        for site in sites.values():
            self.scaler.hook(site)
        self.set_adapter(self.active_adapters)

    def delete_adapter(self, adapter_name: str) -> None:
        self.sites.pop(adapter_name, None)
        super().delete_adapter(adapter_name)

    def remove_hooks(self) -> None:
        self.scaler.remove()
        self._layer_hook.remove()

    # ----- prefill: compute the vectors -----------------------------------------------------------------
    def _before_decoder_layer(self, module, args, kwargs):
        if self.disable_adapters or self._state.mode == "off":
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        if self._state.mode == "compute":
            self.set_row_vectors(self.compute_row_vectors(hidden, self._state.pool_mask, self._state.adapter_names))
        elif self.scaler.scales:
            batch = next(iter(self.scaler.scales.values())).shape[0]
            if batch != hidden.shape[0]:
                raise RuntimeError(
                    f"PARA vectors were computed at prefill for {batch} rows but this decode step has "
                    f"{hidden.shape[0]}; run a prefill (a forward without a filled cache) first"
                )
        return None

    def compute_row_vectors(
        self, hidden: torch.Tensor, pool_mask: torch.Tensor, adapter_names: list[str] | None
    ) -> dict[str, torch.Tensor]:
        """Per-target deltas of the scaling vectors ``1 + delta`` for each row: {target: (B, width)}.

        Rows of adapters this layer does not have (``__base__``, or an adapter restricted to other layers) and
        targets an adapter does not scale get exactly 0. Several active adapters compose multiplicatively:
        (1 + a)(1 + b) = 1 + (a + b + a b).
        """
        batch = hidden.shape[0]
        if pool_mask is None:
            pool_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if adapter_names is None:
            groups = {tuple(self.active_adapters): torch.arange(batch, device=hidden.device)}
        else:
            groups = {}
            for name in dict.fromkeys(adapter_names):
                rows = [i for i, n in enumerate(adapter_names) if n == name]
                groups[(name,)] = torch.tensor(rows, device=hidden.device)
        vectors: dict[str, torch.Tensor] = {}
        for names, rows in groups.items():
            for name in names:
                if name not in self.generators:
                    continue
                deltas = self.generators[name](hidden[rows], pool_mask[rows])
                for target, delta in deltas.items():
                    if target not in vectors:
                        vectors[target] = delta.new_zeros(batch, delta.shape[-1])
                    previous = vectors[target][rows]
                    vectors[target] = vectors[target].index_put((rows,), previous + delta + previous * delta)
        return vectors

    def set_row_vectors(self, vectors: dict[str, torch.Tensor] | None) -> None:
        """Hand per-target deltas to the hooks (``None`` clears them)."""
        if vectors is None:
            self.scaler.scales = None
            return
        sites = {target: site for name in self.sites for target, site in self.sites[name].items()}
        dtype = next(self._decoder_layer[0].parameters()).dtype
        self.scaler.scales = module_scales(self._decoder_layer[0], sites, vectors, dtype)
