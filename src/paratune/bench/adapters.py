"""Random-weight adapters for the speed benchmarks: n PEFT folders of one kind, distinct and reproducible.

Speed does not depend on what an adapter learned, only on its shape, so the benchmarks serve adapters with random
weights: PARA r=16 or LoRA r=16, both on q, v and up. ``LORA_ALPHA`` is 32, the value every recorded
``paratune bench serve`` result used (alpha only scales B @ A; it changes no shape and no cost).
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("para", "lora")
RANK = 16
LORA_ALPHA = 32
LORA_TARGETS = ["q_proj", "v_proj", "up_proj"]  # PARA's default targets q, v, up, under their Llama-family names
SCALE = 0.02  # standard deviation of every random adapter weight


def write_adapters(model, kind: str, n: int, root: Path, *, seed: int = 0) -> list[Path]:
    """Write ``n`` adapters of ``kind`` (``para`` or ``lora``) for ``model`` into ``root/<kind><i>`` and return
    their folders. Weights are N(0, 0.02) from one generator seeded with ``seed``, so a run writes the same
    adapters every time. ``model`` is wrapped for the writing and left as it was (PEFT's wrapper unloaded)."""
    import peft
    import torch

    from ..para import ParaConfig

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if kind == "para":
        peft_model = peft.get_peft_model(model, ParaConfig(r=RANK, targets=["q", "v", "up"]))
        marker = ".generators.default."
    else:
        peft_model = peft.get_peft_model(model, peft.LoraConfig(
            r=RANK, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, init_lora_weights=False))
        marker = ".lora_"
    root = Path(root)
    paths = []
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for i in range(n):
                for name, param in peft_model.named_parameters():
                    if marker in name:
                        param.copy_(torch.randn(param.shape, generator=generator).to(param.device, param.dtype) * SCALE)
                paths.append(root / f"{kind}{i}")
                peft_model.save_pretrained(paths[-1])
    finally:
        peft_model.unload()
        model.__dict__.pop("peft_config", None)  # unload leaves PEFT's config behind; the next wrap would warn
    return paths
