"""TrainConfig: every field is one flag of ``paratune train`` (``--grad-accum`` is ``grad_accum``), so the
Python API and the CLI never drift.

Fields whose default depends on the method are ``None`` in the dataclass and are filled in by
``TrainConfig.resolved()``:

=====================  ==========  ==========  ==========  ===============
field                  para        lora        ia3         prompt-tuning
=====================  ==========  ==========  ==========  ===============
``r``                  16          8           (n/a)       (n/a)
``lr``                 1e-3        2e-4        3e-3        3e-2
``targets``            q, v, up    q_proj,     q_proj,     (n/a)
                                   v_proj      v_proj,
                                               down_proj
``pooling``            attention   (n/a)       (n/a)       (n/a)
``activation``         rational    (n/a)       (n/a)       (n/a)
``num_virtual_tokens`` (n/a)       (n/a)       (n/a)       20
=====================  ==========  ==========  ==========  ===============

Setting an option that does not apply to the chosen method ("n/a") is an error rather than silently ignored.
LoRA/IA3 target defaults fall back to PEFT's per-architecture defaults when the model has no ``q_proj`` /
``v_proj`` modules (e.g. GPT-2). IA3 treats ``down_proj`` (and ``fc2`` / ``w2`` / ``dense_4h_to_h``) as a
feed-forward module, i.e. it scales that projection's *input*; for a gated MLP that equals scaling the
up-projection output, the closest match to PARA's ``up`` target.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from ..para.config import ACTIVATIONS, POOLINGS, TARGETS
from .data import FORMATS

METHODS = ("para", "lora", "ia3", "prompt-tuning")
DEFAULT_MODEL = "smollm2-135m-instruct"  # same as paratune.models.DEFAULT_MODEL (not imported: keeps this light)

DEFAULT_R = {"para": 16, "lora": 8}
DEFAULT_LR = {"para": 1e-3, "lora": 2e-4, "ia3": 3e-3, "prompt-tuning": 3e-2}
DEFAULT_POOLING = "attention"
DEFAULT_ACTIVATION = "rational"
DEFAULT_NUM_VIRTUAL_TOKENS = 20

# Which methods each method-specific option applies to.
_APPLIES_TO = {
    "r": ("para", "lora"),
    "targets": ("para", "lora", "ia3"),
    "pooling": ("para",),
    "activation": ("para",),
    "num_virtual_tokens": ("prompt-tuning",),
}


@dataclass
class TrainConfig:
    """Everything ``paratune.training.train`` needs; validated on construction (ValueError naming the field)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "Backbone: embedded default, folder or hub id."})
    data: list[str] = field(
        default_factory=list, metadata={"help": "Training data files/folders (required).", "split": False})
    format: str = field(default="alpaca", metadata={"help": f"Record format, one of {FORMATS}."})
    method: str = field(default="para", metadata={"help": f"Adapter method, one of {METHODS}."})
    r: Optional[int] = field(default=None, metadata={"help": "Bottleneck / rank (para: 16, lora: 8)."})
    targets: Optional[list[str]] = field(
        default=None,
        metadata={"help": "para: subset of q,k,v,o,up,gate,down (default q,v,up); lora/ia3: module names."},
    )
    pooling: Optional[str] = field(default=None, metadata={"help": f"PARA prompt pooling {POOLINGS} (attention)."})
    activation: Optional[str] = field(default=None, metadata={"help": f"PARA activation {ACTIVATIONS} (rational)."})
    num_virtual_tokens: Optional[int] = field(default=None, metadata={"help": "Prompt tuning: soft tokens (20)."})
    output: Optional[str] = field(default=None, metadata={"help": "Output folder: checkpoints, metrics, adapter."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs (ignored when max_steps is set)."})
    max_steps: Optional[int] = field(default=None, metadata={"help": "Optimizer steps; overrides epochs."})
    lr: Optional[float] = field(default=None, metadata={"help": "Peak learning rate (method default)."})
    batch_size: int = field(default=8, metadata={"help": "Examples per device per micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_length: int = field(default=512, metadata={"help": "Longest example in tokens (prompt + response)."})
    eval_data: Optional[list[str]] = field(
        default=None, metadata={"help": "Evaluation data (same format).", "split": False})
    eval_steps: Optional[int] = field(default=None, metadata={"help": "Evaluate every N steps (default save_steps)."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N optimizer steps."})
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation, data order and splits."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    bilevel: bool = field(default=False, metadata={"help": "Train rational coefficients on a validation split."})
    bilevel_lr: float = field(default=1e-6, metadata={"help": "Learning rate of the activation coefficients."})
    bilevel_val_fraction: float = field(default=0.1, metadata={"help": "Share of the records held out for bilevel."})
    warmup_ratio: float = field(default=0.06, metadata={"help": "Linear warm-up as a share of all steps."})
    logging_steps: int = field(default=10, metadata={"help": "Log (and write metrics.jsonl) every N steps."})

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Normalise list/str spellings and check every value; raise ValueError naming the field."""
        self.method = _choice("method", self.method, METHODS)
        self.format = _choice("format", self.format, FORMATS)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a non-empty string (a model name, folder or hub id), got {self.model!r}")
        self.data = _paths("data", self.data, required=True)
        self.eval_data = _paths("eval_data", self.eval_data, required=False)
        if self.output is None or not str(self.output).strip():
            raise ValueError(f"output must be a folder path, got {self.output!r}")
        self.output = os.fspath(self.output)

        for name, methods in _APPLIES_TO.items():
            if getattr(self, name) is not None and self.method not in methods:
                raise ValueError(
                    f"{name} does not apply to method {self.method!r} (it applies to: {', '.join(methods)}); "
                    f"got {name}={getattr(self, name)!r}"
                )
        _positive_int("r", self.r, optional=True)
        if self.targets is not None:
            if isinstance(self.targets, str):
                self.targets = [t.strip() for t in self.targets.split(",") if t.strip()]
            self.targets = list(self.targets)
            if not self.targets or not all(isinstance(t, str) and t.strip() for t in self.targets):
                raise ValueError(f"targets must be a non-empty list of names, got {self.targets!r}")
            if self.method == "para":
                unknown = [t for t in self.targets if t not in TARGETS]
                if unknown:
                    raise ValueError(
                        f"targets {unknown} are not PARA targets; allowed: {', '.join(TARGETS)} (got {self.targets!r})"
                    )
        if self.pooling is not None:
            self.pooling = _choice("pooling", self.pooling, POOLINGS)
        if self.activation is not None:
            self.activation = _choice("activation", self.activation, ACTIVATIONS)
        _positive_int("num_virtual_tokens", self.num_virtual_tokens, optional=True)

        _positive_number("epochs", self.epochs)
        _positive_int("max_steps", self.max_steps, optional=True)
        if self.lr is not None:
            _positive_number("lr", self.lr)
        _positive_int("batch_size", self.batch_size)
        _positive_int("grad_accum", self.grad_accum)
        _positive_int("max_length", self.max_length)
        if self.max_length < 2:
            raise ValueError(
                f"max_length must be at least 2 (a prompt token and a response token), got {self.max_length}"
            )
        _positive_int("eval_steps", self.eval_steps, optional=True)
        if self.eval_steps is not None and not self.eval_data:
            raise ValueError(f"eval_steps={self.eval_steps} needs eval_data (no evaluation data was given)")
        _positive_int("save_steps", self.save_steps)
        _positive_int("logging_steps", self.logging_steps)
        for name in ("resume", "bf16", "gradient_checkpointing", "bilevel"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        _positive_number("bilevel_lr", self.bilevel_lr)
        _fraction("bilevel_val_fraction", self.bilevel_val_fraction, allow_zero=False)
        _fraction("warmup_ratio", self.warmup_ratio, allow_zero=True)
        if self.bilevel:
            if self.method != "para":
                raise ValueError(
                    "bilevel applies to method 'para' only (it trains PARA's rational activation), "
                    f"got method={self.method!r}"
                )
            activation = self.activation or DEFAULT_ACTIVATION
            if activation != "rational":
                raise ValueError(
                    "bilevel needs activation='rational' (the learned coefficients it trains), "
                    f"got activation={activation!r}"
                )

    # ------------------------------------------------------------------------------------------------
    def resolved(self) -> "TrainConfig":
        """A copy with every method default filled in (``r``, ``lr``, ``pooling``, ``activation``,
        ``num_virtual_tokens``). LoRA/IA3 ``targets`` stay None here: their default depends on the model."""
        changes: dict[str, Any] = {"lr": self.lr if self.lr is not None else DEFAULT_LR[self.method]}
        if self.method in DEFAULT_R:
            changes["r"] = self.r if self.r is not None else DEFAULT_R[self.method]
        if self.method == "para":
            changes["pooling"] = self.pooling or DEFAULT_POOLING
            changes["activation"] = self.activation or DEFAULT_ACTIVATION
        if self.method == "prompt-tuning":
            changes["num_virtual_tokens"] = self.num_virtual_tokens or DEFAULT_NUM_VIRTUAL_TOKENS
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- checks


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """Case-insensitive; ``prompt_tuning`` is accepted for ``prompt-tuning`` (no allowed value has a "_")."""
    key = value.strip().lower().replace("_", "-") if isinstance(value, str) else value
    if key not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return key


def _paths(name: str, value: Any, *, required: bool) -> Optional[list[str]]:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        if required:
            raise ValueError(f"{name} must name at least one data file or folder, got {value!r}")
        return None
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of paths, got {type(value).__name__}")
    out = []
    for p in value:
        if not isinstance(p, (str, os.PathLike)) or not os.fspath(p).strip():
            raise ValueError(f"{name} holds an invalid path {p!r}")
        out.append(os.fspath(p))
    return out


def _positive_int(name: str, value: Any, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _positive_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _fraction(name: str, value: Any, *, allow_zero: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (0.0 <= value < 1.0 if allow_zero else 0.0 < value < 1.0)
    if not ok:
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
