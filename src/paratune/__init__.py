"""paratune: PARA (prompt-aware representation adjustment) adapters for transformers models."""

from .para import BASE_ROW, PROMPT_MASK_KWARG, ParaConfig, ParaLayer, ParaModel, register_architecture, uses_prompt_mask

__version__ = "0.1.0"

__all__ = [
    "BASE_ROW", "PROMPT_MASK_KWARG", "ParaConfig", "ParaLayer", "ParaModel", "register_architecture", "uses_prompt_mask",
]
