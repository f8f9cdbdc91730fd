"""`paratune train`: every flag is a field of ``TrainConfig`` (the Python API and the CLI never drift)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .training.config import TrainConfig


def _flag_type(annotation):
    """argparse type for a TrainConfig field: lists take one comma-separated string (TrainConfig splits it)."""
    hint = typing.get_type_hints(TrainConfig)[annotation]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    if typing.get_origin(base) is list:
        return str
    return base


def add_parser(commands) -> None:
    p = commands.add_parser(
        "train", help="train a PARA adapter (or a LoRA / (IA)^3 / prompt-tuning baseline)",
        description="Train with the Hugging Face Trainer (torchrun / accelerate launch work unchanged). The loss "
        "covers response tokens only; PARA pools over the prompt tokens only. Checkpoints hold adapter, "
        "optimiser, scheduler, RNG and data position; --resume continues from the last one.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = _flag_type(f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            p.add_argument(flag, action="store_true", help=help_text)
        else:
            p.add_argument(flag, type=kind, default=default, required=f.name in ("data", "output"), help=help_text)
    p.set_defaults(func=run)


def run(args) -> int:
    from .training.trainer import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    result = train(TrainConfig(**values))
    print(f"adapter saved to {result.output_dir} ({result.trainable_params:,} trainable parameters, "
          f"{result.steps} steps, final loss {result.final_loss:.4f})")
    return 0
