"""What each verb runs once its config is built: ``f(config, args) -> exit code``.

Thin on purpose: the work lives beside each verb (``generate.generate``, ``server.launch.serve``,
``training.trainer.train`` ...). What stays here is only what belongs to the command line: the one-line reports
printed at the end, and the command itself recorded in benchmark reports. Every import is inside its function, so
that the table can name these functions without loading any verb.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def _command(args) -> str:
    """The command line as typed, for reports that name the command behind their numbers."""
    return shlex.join(["paratune", *args.argv])


def demo(config, args) -> int:
    from ..demo.run import run_demo

    run_demo(model_name=config.model, steps=config.steps, r=config.r, lr=config.lr, batch_size=config.batch_size,
             max_seconds=config.max_seconds, n_eval=config.n_eval, seed=config.seed)
    return 0


def generate(config, args) -> int:
    from ..generate import generate as run

    return run(config)


def train(config, args) -> int:
    from ..training.trainer import train as run

    result = run(config)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun / accelerate: the main process reports
        loss = "no step logged" if result.final_loss is None else f"final loss {result.final_loss:.4f}"
        print(f"adapter saved to {result.output_dir} ({result.trainable_params:,} trainable parameters, "
              f"{result.steps} steps, {loss})")
    return 0


def evaluate(config, args) -> int:
    from ..evaluate import main as run

    return run(config, _command(args))


def serve(config, args) -> int:
    from ..server.launch import serve as run

    return run(config)


def bench_serve(config, args) -> int:
    from ..bench.serve_bench import run

    run(config, _command(args))
    print(f"wrote {Path(config.output) / 'serve.md'}, serve.json, serve.png")
    return 0


def bench_tenants(config, args) -> int:
    from ..bench.tenants import run

    run(config, _command(args))
    print(f"wrote {Path(config.output) / 'tenants.md'}, tenants.json, tenants.png")
    return 0


def bench_quality(config, args) -> int:
    from ..bench.quality import run

    path = run(config, _command(args), report_only=args.report_only)
    print(path.read_text())
    return 0
