"""The methods the quality protocol compares, their learning-rate grids, and PARA's ablation variants.

Budgets on SmolLM2-135M (30 layers, d 576, q/o 576, k/v 192, FFN 1536), trainable parameters:
- para: r 16 on q, v, up: 1,400,520 (per layer 576*16 down + 16*(576+192+1536) up + the pooling query and the
  rational's coefficients);
- lora: r 24 on q_proj, v_proj: 1,382,400, the matched budget;
- lora-all: r 5 on all seven linear layers (PEFT's common ``all-linear`` choice): 1,526,400, the rank whose
  budget is closest to PARA's (r 4: 1,221,120);
- ia3 (q, v, down input: 69,120) and prompt-tuning (20 virtual tokens: 11,520) are references; they cannot reach
  the budget by construction.

Learning-rate grids: three rates a factor ~3 apart around each method's usual range (PARA and LoRA share one grid;
(IA)^3 and prompt tuning are trained at larger rates by every paper that uses them). When the best validation
score is at an end of the grid, the protocol also tries the next rate beyond it (x3 or /3), once.
"""

from __future__ import annotations

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PARA_ALL_SITES = ["q", "k", "v", "o", "gate", "up", "down"]

METHODS: dict[str, dict] = {
    "para": {"method": "para", "r": 16},
    "lora": {"method": "lora", "r": 24, "targets": ["q_proj", "v_proj"]},
    "lora-all": {"method": "lora", "r": 5, "targets": ALL_LINEAR},
    "ia3": {"method": "ia3"},
    "prompt-tuning": {"method": "prompt-tuning", "num_virtual_tokens": 20},
}

# PARA ablations: one setting changed from "para" each.
ABLATIONS: dict[str, dict] = {
    "para-pool-mean": {"pooling": "mean"},
    "para-pool-last": {"pooling": "last"},
    "para-gelu": {"activation": "gelu"},
    "para-bilevel": {"bilevel": True},
    "para-all7-r7": {"targets": PARA_ALL_SITES, "r": 7},  # all seven sites at about the same budget (1,429,050; the down site scales the 1536-wide input of down_proj)
    "para-r8": {"r": 8},  # half the budget
    "para-r32": {"r": 32},  # twice the budget
}

# Element-wise variants of PARA (where PARA trails LoRA, changes that keep decoding an element-wise multiply),
# each run as a method of its own under the full protocol (its own rate grid on validation, three seeds), on the
# tasks where PARA trailed; never tuned on test data.
VARIANTS: dict[str, dict] = {
    "para-all7": {"targets": PARA_ALL_SITES, "r": 7},  # every projection scaled, about PARA's budget (1,429,050)
}

_GRID_PARA_LORA = (3e-4, 1e-3, 3e-3)
LR_GRIDS: dict[str, tuple[float, ...]] = {
    "para": _GRID_PARA_LORA,
    "lora": _GRID_PARA_LORA,
    "lora-all": _GRID_PARA_LORA,
    "ia3": (1e-3, 3e-3, 1e-2),
    "prompt-tuning": (3e-3, 1e-2, 3e-2),
}
GRID_STEP = 3.0  # the factor of the one extension beyond an end of the grid


def settings(name: str) -> dict:
    """TrainConfig fields of a protocol method or ablation name."""
    if name in METHODS:
        return dict(METHODS[name])
    if name in ABLATIONS:
        return {**METHODS["para"], **ABLATIONS[name]}
    if name in VARIANTS:
        return {**METHODS["para"], **VARIANTS[name]}
    raise ValueError(f"unknown method {name!r} for the quality benchmark; choose from "
                     + ", ".join([*METHODS, *ABLATIONS, *VARIANTS]))


def lr_grid(name: str) -> tuple[float, ...]:
    return LR_GRIDS["para" if name in ABLATIONS or name in VARIANTS else name]


def lr_key(lr: float) -> str:
    """A learning rate as written in cell keys and folder names (3e-4, 1e-3, ...)."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")
