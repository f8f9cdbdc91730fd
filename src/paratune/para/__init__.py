"""PARA: the method itself (config, generator, rational activation, layer, PEFT tuner, architectures)."""

from .peft import register as _register

_register()

from .arch import UnsupportedModelError, register_architecture  # noqa: E402
from .config import ParaConfig  # noqa: E402
from .layer import BASE_ROW, ParaLayer  # noqa: E402
from .model import PROMPT_MASK_KWARG, ParaModel  # noqa: E402


def uses_prompt_mask(model) -> bool:
    """True when ``model`` (a PeftModel, a ParaModel or a bare model) carries PARA layers."""
    return any(isinstance(module, ParaLayer) for module in model.modules())


__all__ = [
    "BASE_ROW", "PROMPT_MASK_KWARG", "ParaConfig", "ParaLayer", "ParaModel", "UnsupportedModelError",
    "register_architecture", "uses_prompt_mask",
]
