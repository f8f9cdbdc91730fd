"""Reading adapters: PEFT-format folders (``adapter_config.json`` + ``adapter_model.safetensors``) of PARA, LoRA
and (IA)^3, checked against one backbone and turned into the kind objects of ``kinds.py``, which hold the
weights until they are installed into the tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ...para.arch import decoder_layers, resolve_sites
from ...para.config import ParaConfig
from ...para.generator import VectorGenerator
from .kinds import Adapter, Ia3Adapter, LoraAdapter, ParaAdapter

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KINDS = ("PARA", "LORA", "IA3")


class AdapterError(ValueError):
    """An adapter that cannot be served: bad files, unsupported options, or a mismatch with the backbone."""


class Backbone:
    """What reading an adapter needs to know of the model: its decoder layers, hidden size and device."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers_path, self.layers = decoder_layers(model)
        self.config = model.config
        self.device = next(model.parameters()).device

    def read(self, name: str, path: str | Path) -> Adapter:
        """The adapter folder at ``path``, loaded under ``name``, not yet installed."""
        path = Path(path)
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config_path.is_file():
            raise AdapterError(f"{path} has no {CONFIG_FILE}")
        if not weights_path.is_file():
            raise AdapterError(f"{path} has no {WEIGHTS_FILE} (only safetensors adapters are served)")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise AdapterError(f"{config_path} is not valid JSON: {error}") from None
        kind = str(config.get("peft_type", "")).upper()
        if kind not in KINDS:
            raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r} is not served; served: {list(KINDS)}")
        weights = _strip_prefix(load_file(str(weights_path), device=str(self.device)))
        loader = {"PARA": self._load_para, "LORA": self._load_lora, "IA3": self._load_ia3}[kind]
        return loader(name, path, config, weights)

    # ----- loaders --------------------------------------------------------------------------------------
    def _load_para(self, name: str, path: Path, config: dict, weights: dict) -> ParaAdapter:
        config = {k: v for k, v in config.items() if k in ParaConfig.__dataclass_fields__}
        para_config = ParaConfig(**config)
        hidden = self.config.get_text_config().hidden_size
        per_layer: dict[int, dict[str, torch.Tensor]] = {}
        pattern = re.compile(rf"^{re.escape(self.layers_path)}\.(\d+)\.para\.generators\.(.+)$")
        for key, tensor in weights.items():
            match = pattern.match(key)
            if not match:
                raise AdapterError(f"{path}: unexpected tensor {key!r} in a PARA adapter for this backbone")
            per_layer.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        expected = para_config.layers_to_transform or list(range(len(self.layers)))
        if sorted(per_layer) != sorted(expected):
            raise AdapterError(
                f"{path}: PARA adapter has generators for layers {sorted(per_layer)[:5]}... but this backbone "
                f"has {len(self.layers)} layers (expected {len(expected)} generators)"
            )
        generators = {}
        for index, state in per_layer.items():
            sites = resolve_sites(self.model, self.layers[index], para_config.targets)
            widths = {t: s.width for t, s in sites.items()}
            generator = VectorGenerator(hidden, para_config.r, widths, para_config.pooling,
                                        para_config.activation, 0.0).to(self.device)
            try:
                generator.load_state_dict(state)
            except RuntimeError as error:
                raise AdapterError(f"{path}: layer {index} does not fit this backbone "
                                   f"(hidden size {hidden}, widths {widths}): {error}") from None
            generators[index] = generator.eval().requires_grad_(False)
        return ParaAdapter(name, para_config, generators)

    def _load_lora(self, name: str, path: Path, config: dict, weights: dict) -> LoraAdapter:
        for option, default in (("use_dora", False), ("bias", "none"), ("modules_to_save", None)):
            if config.get(option, default) not in (default, [], False):
                raise AdapterError(f"{path}: LoRA option {option}={config[option]!r} is not served")
        r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
        scaling = alpha / r ** 0.5 if config.get("use_rslora") else alpha / r
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            match = re.match(r"^(.+)\.lora_([AB])\.weight$", key)
            if not match:
                raise AdapterError(f"{path}: unexpected tensor {key!r} in a LoRA adapter")
            pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
        out = {}
        for module_path, ab in pairs.items():
            module = self._module(path, module_path)
            a, b = ab["A"], ab["B"]
            in_f, out_f = _in_out(module)
            if a.shape != (r, in_f) or b.shape != (out_f, r):
                raise AdapterError(f"{path}: LoRA tensors of {module_path} have shapes {tuple(a.shape)}, "
                                   f"{tuple(b.shape)} but the backbone module is {in_f} -> {out_f} (r={r})")
            out[module_path] = (a, b)
        return LoraAdapter(name, r, scaling, out)

    def _load_ia3(self, name: str, path: Path, config: dict, weights: dict) -> Ia3Adapter:
        feedforward = set(config.get("feedforward_modules") or [])
        vectors = {}
        for key, tensor in weights.items():
            match = re.match(r"^(.+)\.ia3_l$", key)
            if not match:
                raise AdapterError(f"{path}: unexpected tensor {key!r} in an (IA)^3 adapter")
            module_path = match.group(1)
            self._module(path, module_path)
            is_ff = any(module_path == f or module_path.endswith("." + f) for f in feedforward)
            vectors[module_path] = (tensor.reshape(-1), "input" if is_ff else "output")
        return Ia3Adapter(name, vectors)

    def _module(self, path: Path, module_path: str) -> nn.Module:
        try:
            return self.model.get_submodule(module_path)
        except AttributeError:
            raise AdapterError(f"{path}: the backbone has no module {module_path!r}") from None


def _strip_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("base_model.model."): v for k, v in weights.items()}


def _in_out(module: nn.Module) -> tuple[int, int]:
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    if hasattr(module, "nf"):  # Conv1D
        return module.weight.shape[0], module.nf
    raise AdapterError(f"LoRA on {type(module).__name__} is not served")
