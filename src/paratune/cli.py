"""paratune command line: one verb per module.

Every verb but ``eval`` is a config dataclass: ``TrainConfig`` (training/config.py),
``GenerateConfig`` (generate.py), ``ServeConfig`` (server/cli.py), ``DemoConfig`` and ``BenchServeConfig`` (here), ``QualityConfig`` (bench/quality).
``add_config_arguments`` makes one flag per field (``--batch-size`` is ``batch_size``) and ``config_from_args``
builds the dataclass from the parsed flags, so the dataclass validates (ValueError naming the field, the value
and what is accepted) and the Python API and the CLI cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .models import DEFAULT_MODEL

# ------------------------------------------------------------------------------ config dataclasses as flags


def _field_kind(hint: Any) -> tuple[type, bool]:
    """(scalar type, is a list) of a field annotation: ``Optional[int]`` -> (int, False), ``list[str]`` ->
    (str, True)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
        else [hint]
    base = args[0]
    if typing.get_origin(base) is list:
        return (typing.get_args(base) or (str,))[0], True
    return base, False


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, *, required: tuple[str, ...] = (),
                         helps: Optional[dict[str, str]] = None) -> None:
    """One flag per field of the dataclass ``config_cls``. Help comes from ``field(metadata={"help": ...})`` or
    ``helps``. Booleans: ``--x`` when the default is False, ``--x / --no-x`` when it is True. Lists take one or
    more values, repeatable (``--data a.jsonl b.jsonl``, ``--adapter a=x --adapter b=y``); their items are also
    split on commas (``--targets q,up``) unless the field's metadata says ``"split": False`` (paths)."""
    hints = typing.get_type_hints(config_cls)
    helps = helps or {}
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = helps.get(f.name, f.metadata.get("help", ""))
        kind, is_list = _field_kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if kind is bool:
            if default:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=True, help=help_text)
            else:
                parser.add_argument(flag, action="store_true", help=help_text)
        elif is_list:  # no argparse default: the dataclass default applies when the flag is absent
            shown = f" (default: {','.join(map(str, default))})" if default else ""
            parser.add_argument(flag, nargs="+", action="extend", default=argparse.SUPPRESS, required=f.name in required,
                                metavar=f.name.upper(), help=help_text + shown)
        else:
            parser.add_argument(flag, type=kind, default=default, required=f.name in required, help=help_text)


def config_from_args(config_cls: type, args: argparse.Namespace):
    """The dataclass ``config_cls`` built from the flags ``add_config_arguments`` made (and validated by it)."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for f in dataclasses.fields(config_cls):
        if not f.init or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        kind, is_list = _field_kind(hints[f.name])
        if is_list:
            if value is None:
                continue
            items = value if f.metadata.get("split", True) is False else \
                [part.strip() for item in value for part in str(item).split(",") if part.strip()]
            try:
                value = [kind(item) for item in items]
            except ValueError:
                raise ValueError(f"{f.name} must be a list of {kind.__name__} values, got {value!r}") from None
        values[f.name] = value
    return config_cls(**values)


def check(name: str, value: Any, ok: bool, accepted: str) -> None:
    """ValueError ``"<name> must be <accepted>, got <value>"`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any, minimum: float, *, strict: bool = True) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value > minimum if strict else value >= minimum)


# ----------------------------------------------------------------------------------------------- verbs


@dataclass
class DemoConfig:
    """``paratune demo``: three PARA tenants trained on generated tasks, served, compared with the base model."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local folder or the embedded default"})
    steps: int = field(default=30, metadata={"help": "training steps per tenant"})
    r: int = field(default=16, metadata={"help": "PARA bottleneck width"})
    lr: float = field(default=3e-3, metadata={"help": "learning rate"})
    batch_size: int = field(default=8, metadata={"help": "examples per training step"})
    max_seconds: Optional[float] = field(
        default=None, metadata={"help": "stop a tenant's training after this long (such a tenant is not cached)"})
    n_eval: int = field(default=8, metadata={"help": "held-out prompts per tenant"})
    seed: int = field(default=0, metadata={"help": "seed of the generated tasks and of training"})

    def __post_init__(self):
        check("model", self.model, isinstance(self.model, str) and bool(self.model.strip()),
              "a model name, folder or hub id")
        for name in ("steps", "r", "batch_size", "n_eval"):
            check(name, getattr(self, name), is_int(getattr(self, name), 1), "a positive integer")
        check("lr", self.lr, is_number(self.lr, 0), "a positive number")
        check("max_seconds", self.max_seconds, self.max_seconds is None or is_number(self.max_seconds, 0),
              "a positive number of seconds or None")
        check("seed", self.seed, is_int(self.seed, 0), "an integer >= 0")


def _demo(args) -> int:
    from .demo.run import run_demo

    cfg = config_from_args(DemoConfig, args)
    run_demo(model_name=cfg.model, steps=cfg.steps, r=cfg.r, lr=cfg.lr, batch_size=cfg.batch_size,
             max_seconds=cfg.max_seconds, n_eval=cfg.n_eval, seed=cfg.seed)
    return 0


def _train(args) -> int:
    from .training.config import TrainConfig
    from .training.trainer import train

    result = train(config_from_args(TrainConfig, args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate: the main process reports
        loss = "no step logged" if result.final_loss is None else f"final loss {result.final_loss:.4f}"
        print(f"adapter saved to {result.output_dir} ({result.trainable_params:,} trainable parameters, "
              f"{result.steps} steps, {loss})")
    return 0


def _bench_config_class():
    """``bench.serve_bench.BenchConfig`` (it validates its own fields)."""
    from .bench.serve_bench import BenchConfig

    return BenchConfig


BENCH_SERVE_HELP = {
    "systems": "what to run: engine (decode only), llama-batched-bench, paratune (our HTTP server), llama-server",
    "kinds": "base (no adapter), para, lora (r=16 on q,v,up; one distinct adapter per concurrent client)",
    "concurrency": "concurrent requests (closed loop) and batch sizes (decode only)",
    "modes": "HTTP arrival patterns: closed (N clients back to back), poisson (open loop at --poisson-rates)",
    "poisson_rates": "Poisson arrival rates, requests/s", "poisson_requests": "requests per Poisson run (0 skips)",
    "repeats": "repeats; systems alternate within each", "prompt_len": "prompt tokens per request",
    "new_tokens": "tokens generated per request (max_tokens, EOS ignored where the server allows it)",
    "requests_per_client": "requests each closed-loop client sends", "min_requests": "fewest requests per closed-loop run",
    "threads": "CPU threads for llama.cpp and for our engine/server", "stream": "stream responses (adds TTFT)",
    "prefill_len": "prompt length of the PARA prefill-overhead check",
    "prefill_batch": "prompts of the prefill-overhead check",
    "peft_reference": "also time PEFT's mixed-batch LoRA generate (decode only)",
    "engine_model": "backbone of the decode-only engine run (random Llama shapes only with --systems engine)",
    "device": "device of the decode-only engine run",
    "dtype": "float32, bfloat16 or float16: every paratune run, and llama.cpp's base GGUF in the same precision "
             "(F32, BF16, F16)",
    "llama_cpp_version": "llama-cpp-python sdist whose vendored llama.cpp is built and cached (empty: the pinned "
                         "version, bench/llama_cpp.py LLAMA_CPP_PYTHON_VERSION)",
    "output": "folder for serve.md / serve.json / serve.png",
}


def _bench_serve(args) -> int:
    from .bench.serve_bench import run

    cfg = config_from_args(_bench_config_class(), args)
    run(cfg, shlex.join(["paratune", *args.argv]))
    print(f"wrote {Path(cfg.output) / 'serve.md'}, serve.json, serve.png")
    return 0


def _bench_quality(args) -> int:
    from .bench.quality import QualityConfig, run

    cfg = config_from_args(QualityConfig, args)
    path = run(cfg, shlex.join(["paratune", *args.argv]), report_only=args.report_only)
    print(path.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paratune",
        description="PARA (prompt-aware representation adjustment) adapters: train, evaluate and serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="train three PARA tenants, serve them, compare with the base model",
        description="Train one PARA adapter per generated task (sentiment, arithmetic, French words; cached "
        "after the first run), serve them with the base model through the OpenAI-compatible server, send "
        "held-out prompts concurrently with the openai client, and print answers side by side with accuracy "
        "and throughput.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_config_arguments(demo, DemoConfig)
    demo.set_defaults(func=_demo)

    from . import generate

    generate.add_parser(commands)

    from . import evaluate
    from .server import cli as serve_cli
    from .training.config import TrainConfig

    train = commands.add_parser(
        "train", help="train a PARA adapter (or a LoRA / (IA)^3 / prompt-tuning baseline)",
        description="Train with the Hugging Face Trainer (torchrun / accelerate launch work unchanged). The loss "
        "covers response tokens only; PARA pools over the prompt tokens only. Checkpoints hold adapter, "
        "optimiser, scheduler, RNG and data position; --resume continues from the last one. Every flag is a "
        "field of paratune.training.TrainConfig.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(train, TrainConfig, required=("data", "output"))
    train.set_defaults(func=_train)
    evaluate.add_parser(commands)

    serve_cli.add_parser(commands)

    bench = commands.add_parser("bench", help="benchmarks (serving speed, quality)",
                                description="Benchmarks that print a table and write results under --output.")
    bench_kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    serve = bench_kinds.add_parser(
        "serve", help="serving speed: our engine and HTTP server vs llama.cpp, base / PARA / LoRA tenants",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Base, PARA and LoRA tenants (one distinct adapter per concurrent request): decode-only in "
        "our engine vs llama-batched-bench, and end to end over HTTP (closed loop at each concurrency, Poisson "
        "arrivals) through `paratune serve` vs llama-server with per-request LoRA. llama.cpp is built once from "
        "the llama-cpp-python sdist and cached. Systems alternate within each repeat; writes serve.md, "
        "serve.json and serve.png. Quick look: --systems engine paratune --concurrency 1 8 --repeats 1 "
        "--modes closed.")
    add_config_arguments(serve, _bench_config_class(), helps=BENCH_SERVE_HELP)
    serve.set_defaults(func=_bench_serve)

    quality = bench_kinds.add_parser(
        "quality", help="fair quality protocol: PARA vs LoRA vs (IA)^3 vs prompt tuning (resumable, hours on a CPU)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For every task and method: the learning rate chosen on a validation split carved from the "
        "training data, then several seeds at that rate scored on the test split with lm-evaluation-harness; "
        "paired bootstrap CIs for PARA - LoRA; PARA ablations. Every finished training run and scoring is kept "
        "in OUTPUT/runs.jsonl and skipped on the next run, so the same command resumes. Writes quality.md, "
        "quality.json and quality.png. Quick look: --scale 0.05 --output /tmp/q.")
    from .bench.quality import QualityConfig

    add_config_arguments(quality, QualityConfig)
    quality.add_argument("--report-only", action="store_true",
                         help="rebuild quality.md/json/png from the finished runs without training anything")
    quality.set_defaults(func=_bench_quality)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line, for reports that name the command behind their numbers
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"paratune {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
