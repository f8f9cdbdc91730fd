"""Reading adapters: PEFT-format folders (``adapter_config.json`` + ``adapter_model.safetensors``) of PARA, LoRA
and (IA)^3, checked against one backbone and turned into the kind objects of ``kinds.py``: the host copy the store
caches, on the CPU, already in the dtype its tables use (so installing it is a copy, and its ``nbytes`` is what
it costs). Reading is safe on any thread: it only reads the model's structure.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import torch
from safetensors.torch import load
from torch import nn

from ...para.arch import decoder_layers, resolve_sites
from ...para.config import ParaConfig
from ...para.generator import fixed_activation
from .kinds import Adapter, Ia3Adapter, LoraAdapter, ParaAdapter
from .tables import ParaLayer

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KINDS = ("PARA", "LORA", "IA3")


class AdapterError(ValueError):
    """An adapter that cannot be served: bad files, unsupported options, or a mismatch with the backbone."""


class Backbone:
    """What reading an adapter needs to know of the model: its decoder layers, hidden size and dtypes."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers_path, self.layers = decoder_layers(model)
        self.config = model.config
        self.dtype = next(model.parameters()).dtype
        # PARA's generators run in fp32 under a half-precision model (their pooled sums and rational activation)
        self.para_dtype = torch.float32 if self.dtype in (torch.float16, torch.bfloat16) else self.dtype
        self._widths: dict[tuple[int, tuple[str, ...]], dict[str, int]] = {}

    def kind_of(self, path: str | Path) -> str:
        """PARA, LORA or IA3, read from the folder's adapter_config.json alone (AdapterError if unreadable)."""
        return self._config(Path(path))[1]

    def estimate_bytes(self, path: str | Path) -> int:
        """Bytes the host copy of the adapter at ``path`` will take, from the safetensors header alone (no
        tensor is read): what the store reserves before it reads, so a load never overshoots its budget."""
        kind = self.kind_of(path)
        element = (self.para_dtype if kind == "PARA" else self.dtype).itemsize
        total = 0
        for key, info in _safetensors_header(Path(path) / WEIGHTS_FILE).items():
            if key != "__metadata__":
                numel = 1
                for n in info.get("shape", []):
                    numel *= int(n)
                total += numel * element
        return total

    def read(self, name: str, path: str | Path) -> Adapter:
        """The adapter folder at ``path``, loaded under ``name`` as a host copy (CPU), not yet installed."""
        path = Path(path)
        config, kind = self._config(path)
        try:
            # one read, then safetensors parses the bytes: ~1.5x faster than load_file's many small reads
            weights = _strip_prefix(load((path / WEIGHTS_FILE).read_bytes()))
        except Exception as error:  # safetensors raises its own errors for a truncated or garbled file
            raise AdapterError(f"{path / WEIGHTS_FILE} is not a readable safetensors file: {error}") from None
        loader = {"PARA": self._load_para, "LORA": self._load_lora, "IA3": self._load_ia3}[kind]
        return loader(name, path, config, weights)

    def _config(self, path: Path) -> tuple[dict, str]:
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config_path.is_file():
            raise AdapterError(f"{path} has no {CONFIG_FILE}")
        if not weights_path.is_file():
            raise AdapterError(f"{path} has no {WEIGHTS_FILE} (only safetensors adapters are served)")
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise AdapterError(f"{config_path} is not valid JSON: {error}") from None
        if not isinstance(config, dict):
            raise AdapterError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
        kind = str(config.get("peft_type", "")).upper()
        if kind not in KINDS:
            raise AdapterError(f"{path}: peft_type {config.get('peft_type')!r} is not served; served: {list(KINDS)}")
        return config, kind

    def widths(self, index: int, targets) -> dict[str, int]:
        key = (index, tuple(targets))
        if key not in self._widths:  # resolving is ~0.1 ms a layer: once per (layer, targets), not per load
            sites = resolve_sites(self.model, self.layers[index], list(targets))
            self._widths[key] = {t: s.width for t, s in sites.items()}
        return self._widths[key]

    # ----- loaders --------------------------------------------------------------------------------------
    def _load_para(self, name: str, path: Path, config: dict, weights: dict) -> ParaAdapter:
        try:
            para_config = ParaConfig(**{k: v for k, v in config.items() if k in ParaConfig.__dataclass_fields__})
        except (TypeError, ValueError) as error:
            raise AdapterError(f"{path / CONFIG_FILE}: {error}") from None
        hidden = self.config.get_text_config().hidden_size
        per_layer: dict[int, dict[str, torch.Tensor]] = {}
        pattern = re.compile(rf"^{re.escape(self.layers_path)}\.(\d+)\.para\.generators\.(.+)$")
        for key, tensor in weights.items():
            match = pattern.match(key)
            if not match:
                raise AdapterError(f"{path}: unexpected tensor {key!r} in a PARA adapter for this backbone")
            per_layer.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
        expected = para_config.layers_to_transform or list(range(len(self.layers)))
        if sorted(per_layer) != sorted(expected) or any(i >= len(self.layers) for i in per_layer):
            raise AdapterError(
                f"{path}: PARA adapter has generators for layers {sorted(per_layer)[:5]}... but this backbone "
                f"has {len(self.layers)} layers (expected {len(expected)} generators)"
            )
        r, rational_kind = para_config.r, para_config.activation == "rational"
        layers = {}
        for index, state in per_layer.items():
            widths = self.widths(index, para_config.targets)
            shapes = {"down.weight": (r, hidden), "down.bias": (r,), "up.weight": (sum(widths.values()), r)}
            if para_config.pooling == "attention":
                shapes["attention_query"] = (hidden,)
            if rational_kind:
                shapes["activation.numerator"], shapes["activation.denominator"] = (7,), (5,)
            if set(state) != set(shapes):
                raise AdapterError(f"{path}: layer {index} has tensors {sorted(state)} but a PARA generator "
                                   f"(r={r}, pooling={para_config.pooling}, activation={para_config.activation}) "
                                   f"has {sorted(shapes)}")
            for key, shape in shapes.items():
                if tuple(state[key].shape) != shape:
                    raise AdapterError(f"{path}: layer {index} does not fit this backbone: {key} has shape "
                                       f"{tuple(state[key].shape)}, the backbone needs {shape} (hidden size "
                                       f"{hidden}, r={r}, widths {widths})")
            cast = {k: v.to(self.para_dtype).contiguous() for k, v in state.items()}
            layers[index] = ParaLayer(cast["down.weight"], cast["down.bias"], cast.get("attention_query"),
                                      cast.get("activation.numerator"), cast.get("activation.denominator"),
                                      cast["up.weight"], widths)
        activation = "rational" if rational_kind else fixed_activation(para_config.activation)
        return ParaAdapter(name, para_config, layers, activation)

    def _load_lora(self, name: str, path: Path, config: dict, weights: dict) -> LoraAdapter:
        for option, default in (("use_dora", False), ("bias", "none"), ("modules_to_save", None)):
            if config.get(option, default) not in (default, [], False):
                raise AdapterError(f"{path}: LoRA option {option}={config[option]!r} is not served")
        try:
            r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
        except (KeyError, TypeError, ValueError):
            raise AdapterError(f"{path / CONFIG_FILE}: a LoRA config needs an integer r (and a number lora_alpha), "
                               f"got r={config.get('r')!r}, lora_alpha={config.get('lora_alpha')!r}") from None
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
            out[module_path] = (a.to(self.dtype).contiguous(), b.to(self.dtype).contiguous())
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
            vectors[module_path] = (tensor.reshape(-1).to(self.dtype), "input" if is_ff else "output")
        return Ia3Adapter(name, vectors)

    def _module(self, path: Path, module_path: str) -> nn.Module:
        try:
            return self.model.get_submodule(module_path)
        except AttributeError:
            raise AdapterError(f"{path}: the backbone has no module {module_path!r}") from None


def _safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: 8 bytes of little-endian length, then the header."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100_000_000:
                raise ValueError(f"header length {length} is implausible")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise AdapterError(f"{path} is not a readable safetensors file: {error}") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path} is not a readable safetensors file: its header is not a JSON object")
    return header


def _strip_prefix(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("base_model.model."): v for k, v in weights.items()}


def _in_out(module: nn.Module) -> tuple[int, int]:
    if hasattr(module, "in_features"):
        return module.in_features, module.out_features
    if hasattr(module, "nf"):  # Conv1D
        return module.weight.shape[0], module.nf
    raise AdapterError(f"LoRA on {type(module).__name__} is not served")
