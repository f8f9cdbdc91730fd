"""The verb table: one ``Verb`` per ``paratune`` command, in the order ``paratune --help`` lists them.

A verb names its config dataclass and the function it runs as ``"module:attribute"`` strings, imported only when
that verb is on the command line: ``paratune --help`` lists the table without importing a single verb (no
engine, no transformers model code, no lm-eval). Each config lives beside its verb (litgpt's rule: verbs map onto
modules); the table only says where.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Verb:
    """One command. A verb with ``children`` is a group (``bench``) whose sub-verbs are chosen by a second word.

    ``config``: the dataclass whose fields are the flags. ``run``: ``f(config, args) -> exit code`` (``args`` for
    what lies outside the config: the command line, ``extra_flags``). ``required``: flags made required.
    ``extra_flags``: ``(flag, argparse keywords)`` pairs beside the config's (flags that are not settings).
    """

    name: str
    help: str
    description: str = ""
    config: Optional[str] = None
    run: Optional[str] = None
    required: tuple[str, ...] = ()
    extra_flags: tuple[tuple[str, dict[str, Any]], ...] = ()
    children: tuple["Verb", ...] = ()


def load(ref: str, *, optional: bool = False) -> Any:
    """The object ``"package.module:attribute"`` names; None for a missing attribute when ``optional``."""
    module, _, attribute = ref.partition(":")
    value = getattr(importlib.import_module(module), attribute, None)
    if value is None and not optional:
        raise ImportError(f"{module} has no attribute {attribute!r}")
    return value


VERBS: tuple[Verb, ...] = (
    Verb(
        "demo", help="train three PARA tenants, serve them, compare with the base model",
        description="Train one PARA adapter per generated task (sentiment, arithmetic, French words; cached "
        "after the first run), serve them with the base model through the OpenAI-compatible server, send "
        "held-out prompts concurrently with the openai client, and print answers side by side with accuracy "
        "and throughput.",
        config="paratune.demo.config:DemoConfig", run="paratune.cli.commands:demo"),
    Verb(
        "generate", help="run prompts through the multi-tenant engine",
        description="Run one prompt or a JSONL file of prompts (each may name its adapter) through the engine "
        "in one continuously batched run; prints JSONL {adapter, text, token_ids} in input order.",
        config="paratune.generate:GenerateConfig", run="paratune.cli.commands:generate"),
    Verb(
        "train", help="train a PARA adapter (or a LoRA / (IA)^3 / prompt-tuning baseline)",
        description="Train with the Hugging Face Trainer (torchrun / accelerate launch work unchanged). The loss "
        "covers response tokens only; PARA pools over the prompt tokens only. Checkpoints hold adapter, "
        "optimiser, scheduler, RNG and data position; --resume continues from the last one. Every flag is a "
        "field of paratune.training.TrainConfig.",
        config="paratune.training.config:TrainConfig", run="paratune.cli.commands:train",
        required=("data", "output")),
    Verb(
        "eval", help="evaluate a backbone (+ adapter) with lm-evaluation-harness",
        description="Runs lm_eval.simple_evaluate on paratune's task definitions (lm-eval's own formulations). "
        "A built-in task reads --data FILE, else the local copy in --data-dir DIR or $PARATUNE_DATA, else the hub "
        "data set lm-eval itself uses (through the datasets cache). Multiple-choice tasks score "
        "each option's text after the context (acc; acc_norm divides the log-likelihood by the option's length "
        "in characters); gsm8k, squad and bbh generate greedily. --task multiple-choice --data F.jsonl scores "
        "a file of {\"query\", \"choices\", \"gold\"} lines as query + \" \" + choice. PARA adapters receive "
        "the context tokens as the prompt mask; any other PEFT adapter is evaluated as PEFT loads it.",
        config="paratune.evaluate:EvalConfig", run="paratune.cli.commands:evaluate", required=("task",)),
    Verb(
        "serve", help="OpenAI-compatible server: one backbone, many adapters",
        description="Serve the backbone and its adapters over an OpenAI-compatible API. A request names its "
        "adapter in `model` (or the backbone's own name for the base model). Adapters can be loaded and "
        "unloaded at runtime through /v1/adapters (paths relative to --adapter-dir).",
        config="paratune.server.serve_config:ServeConfig", run="paratune.cli.commands:serve"),
    Verb(
        "bench", help="benchmarks (serving speed, quality)",
        description="Benchmarks that print a table and write results under --output.",
        children=(
            Verb(
                "serve", help="serving speed: our engine and HTTP server vs llama.cpp, base / PARA / LoRA tenants",
                description="Base, PARA and LoRA tenants (one distinct adapter per concurrent request): decode-only "
                "in our engine vs llama-batched-bench, and end to end over HTTP (closed loop at each concurrency, "
                "Poisson arrivals) through `paratune serve` vs llama-server with per-request LoRA. llama.cpp is "
                "built once from the llama-cpp-python sdist and cached. Systems alternate within each repeat; "
                "writes serve.md, serve.json and serve.png. Quick look: --systems engine paratune --concurrency 1 8 "
                "--repeats 1 --modes closed.",
                config="paratune.bench.serve_bench:BenchConfig", run="paratune.cli.commands:bench_serve"),
            Verb(
                "tenants", help="serving speed as distinct tenants grow into the thousands (adapters loaded on "
                "demand): paratune vs vLLM",
                description="N distinct random-weight adapters (PARA, LoRA; base = no adapter as the reference) "
                "for each N of --tenants, served by a fresh `paratune serve --max-active-adapters K "
                "--adapter-cache-bytes B` per cell (and by vLLM's CPU backend, loading LoRAs through its "
                "filesystem resolver with --max-cpu-loras K). A seeded trace: Poisson arrivals at --rate, each "
                "request's tenant drawn from a Zipf(--alpha) popularity, the same trace for every system at an N. "
                "Reports output tokens/s, TTFT of warm and cold requests, adapter load latency and cache hit rate "
                "(paratune's /metrics), start-up time, peak RSS and paratune's memory budget; ratios N / N=1 and "
                "PARA / vLLM LoRA. Adapter sets are written once and cached (--work-dir). Writes tenants.md, "
                "tenants.json (after every cell; the same command resumes) and tenants.png. Quick look: "
                "--systems paratune --tenants 1 100 --requests 40 --repeats 1 --output /tmp/t.",
                config="paratune.bench.tenants:TenantsConfig", run="paratune.cli.commands:bench_tenants"),
            Verb(
                "quality", help="fair quality protocol: PARA vs LoRA vs (IA)^3 vs prompt tuning (resumable, hours "
                "on a CPU)",
                description="For every task and method: the learning rate chosen on a validation split carved from "
                "the training data, then several seeds at that rate scored on the test split with "
                "lm-evaluation-harness; paired bootstrap CIs for PARA - LoRA; PARA ablations. Every finished "
                "training run and scoring is kept in OUTPUT/runs.jsonl and skipped on the next run, so the same "
                "command resumes. Writes quality.md, quality.json and quality.png. Quick look: --scale 0.05 "
                "--output /tmp/q.",
                config="paratune.bench.quality:QualityConfig", run="paratune.cli.commands:bench_quality",
                extra_flags=(("--report-only", {
                    "action": "store_true",
                    "help": "rebuild quality.md/json/png from the finished runs without training anything"}),)),
        )),
)
