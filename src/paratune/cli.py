"""paratune command line: one verb per module."""

from __future__ import annotations

import argparse
import sys

from .models import DEFAULT_MODEL


def _demo(args) -> int:
    from .demo.run import run_demo

    run_demo(model_name=args.model, steps=args.steps, r=args.r, lr=args.lr, batch_size=args.batch_size,
             max_seconds=args.max_seconds, output=args.output, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paratune",
        description="PARA (prompt-aware representation adjustment) adapters: train, evaluate and serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train PARA on a generated task and compare with the base model",
        description="Load the backbone, train a PARA adapter for a minute or two on a sentiment task the "
        "project generates itself, and print base vs adapted answers on held-out reviews side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder or the embedded default")
    demo.add_argument("--steps", type=int, default=60, help="training steps")
    demo.add_argument("--r", type=int, default=16, help="PARA bottleneck width")
    demo.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--max-seconds", type=float, default=150.0, help="stop training after this long")
    demo.add_argument("--output", default=None, help="save the trained adapter to this folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    from . import generate

    generate.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"paratune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
