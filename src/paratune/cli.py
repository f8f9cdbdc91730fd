"""paratune command line: one verb per module."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .models import DEFAULT_MODEL


def _demo(args) -> int:
    from .demo.run import run_demo

    run_demo(model_name=args.model, steps=args.steps, r=args.r, lr=args.lr, batch_size=args.batch_size,
             max_seconds=args.max_seconds, n_eval=args.n_eval, seed=args.seed)
    return 0


def _bench_serve(args) -> int:
    from .bench.serve_bench import BenchConfig, run

    cfg = BenchConfig(
        shapes=args.shapes.split(","), concurrency=[int(c) for c in args.concurrency.split(",")],
        prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats, prefill_len=args.prefill_len,
        prefill_batch=args.prefill_batch, many_adapters=args.many_adapters,
        peft_reference=not args.no_peft_reference, profile=not args.no_profile, device=args.device,
        output=args.output)
    summary = run(cfg, shlex.join(["paratune", *args.argv]))
    print(json.dumps({shape: {k: v for k, v in s.items()} for shape, s in summary.items()}, indent=1))
    return 0


def _bench_quality(args) -> int:
    from .bench.quality_bench import QualityConfig, load_cells, run, write_report

    cfg = QualityConfig(tasks=args.tasks.split(","), methods=args.methods.split(","),
                        seeds=[int(s) for s in args.seeds.split(",")], multitask=not args.no_multitask,
                        scale=args.scale, model=args.model, output=args.output)
    command = shlex.join(["paratune", *args.argv])
    if args.report_only:
        if not load_cells(cfg):
            raise FileNotFoundError(f"no finished cells in {Path(cfg.output) / 'quality_cells.jsonl'}")
        write_report(cfg, command)
    else:
        run(cfg, command)
    print(Path(cfg.output, "quality.md").read_text())
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
    demo.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder or the embedded default")
    demo.add_argument("--steps", type=int, default=30, help="training steps per tenant")
    demo.add_argument("--r", type=int, default=16, help="PARA bottleneck width")
    demo.add_argument("--lr", type=float, default=3e-3, help="learning rate")
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--max-seconds", type=float, default=None,
                      help="stop a tenant's training after this long (such a tenant is not cached)")
    demo.add_argument("--n-eval", type=int, default=8, help="held-out prompts per tenant")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    from . import generate

    generate.add_parser(commands)

    from . import evaluate, train
    from .server import cli as serve_cli

    train.add_parser(commands)
    evaluate.add_parser(commands)

    serve_cli.add_parser(commands)

    bench = commands.add_parser("bench", help="benchmarks (serving speed, quality)",
                                description="Benchmarks that print a table and write results under --output.")
    bench_kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    serve = bench_kinds.add_parser(
        "serve", help="decode throughput: base vs PARA vs LoRA (ours) vs PEFT mixed-batch LoRA",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="N concurrent requests, each on a distinct adapter, through one engine; also prefill cost "
        "of the generator at long prompts and throughput with 1 vs many registered adapters. Writes "
        "serve.md, serve.json and serve.png.")
    serve.add_argument("--shapes", default="smollm2-135m,llama-430m-random", help="comma-separated backbones")
    serve.add_argument("--concurrency", default="1,8,32", help="comma-separated request counts")
    serve.add_argument("--prompt-len", type=int, default=64)
    serve.add_argument("--new-tokens", type=int, default=32)
    serve.add_argument("--repeats", type=int, default=3)
    serve.add_argument("--prefill-len", type=int, default=512)
    serve.add_argument("--prefill-batch", type=int, default=4)
    serve.add_argument("--many-adapters", type=int, default=1000, help="0 to skip")
    serve.add_argument("--no-peft-reference", action="store_true", help="skip PEFT's mixed-batch generate")
    serve.add_argument("--no-profile", action="store_true")
    serve.add_argument("--device", default="cpu", help="cpu or cuda")
    serve.add_argument("--output", default="docs/results")
    serve.set_defaults(func=_bench_serve)

    quality = bench_kinds.add_parser(
        "quality", help="PARA vs LoRA vs (IA)^3 vs prompt tuning on real tasks (resumable, hours on a CPU)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train every method on every task with the same code, data and seeds, evaluate on held-out "
        "data, and write quality.md / quality.json / quality.png. Finished cells are kept in "
        "quality_cells.jsonl and skipped on the next run, so the benchmark can be stopped and resumed.")
    quality.add_argument("--tasks", default="sst2,boolq,arc-easy,squad", help="also: copa, openbookqa")
    quality.add_argument("--methods", default="para,lora,ia3,prompt-tuning", help="comma-separated methods")
    quality.add_argument("--seeds", default="0", help="comma-separated training seeds (the eval sets never change)")
    quality.add_argument("--no-multitask", action="store_true", help="skip the union-of-tasks adapters")
    quality.add_argument("--scale", type=float, default=1.0, help="scale data sizes and steps (0.1 = quick look)")
    quality.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder or the embedded default")
    quality.add_argument("--output", default="docs/results", help="folder for the cells file and the report")
    quality.add_argument("--report-only", action="store_true",
                         help="rebuild quality.md/json/png from the finished cells without training anything")
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
