"""Engine A/B: decode throughput of this checkout's engine against another checkout's, in-process, alternating.

Why beside ``paratune bench serve --compare-src``: the HTTP runs include server start-up, tokenisation and the
client, and on a shared 2-core machine a cell can move by a third between repeats. Timing only the engine's decode
steps (``engine.stats``: decode tokens / decode seconds, both trees record them) of the same requests, with the two
trees alternating round by round in fresh processes, leaves less room for noise.

    git worktree add /tmp/before <commit>
    python benchmarks/engine_ab.py --compare-src /tmp/before --rounds 4 --dtype float32
    python benchmarks/engine_ab.py --compare-src /tmp/before --model overhead --rounds 6

Each round runs one worker process per tree (the order flips every round): it puts that tree's ``src`` first on
``sys.path``, loads the model, loads the same random-weight adapters (written once by this tree), and for each kind
and batch size decodes ``batch`` requests of 64 prompt + 32 new tokens, every request on its own adapter. Prints a
table of after / before ratios (median and min-max over rounds) and writes JSON and a markdown table.

``--model``: ``smollm2`` (the embedded SmolLM2-135M backbone: what users run) or ``overhead`` (a random-weight
Llama with SmolLM2's 30 layers but d=64, so every matmul is nearly free and a decode step's time is the engine's
own work per layer and per step: one base row, one thread, 300 new tokens; what an engine refactor can change).
Only the public engine API is used (``Engine``, ``Request``, ``SamplingParams``, ``add_adapter``, ``generate``,
``stats``), so any checkout that has it can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    sys.path.insert(0, str(Path(args.src) / "src"))
    import torch

    torch.set_num_threads(args.threads)
    from paratune.engine import Engine, Request, SamplingParams

    model, tokenizer = load_model(args.model, args.dtype)
    engine = Engine(model, tokenizer, max_batch=max(args.batch))
    names = {"base": [None]}
    for kind in ("para", "lora"):
        names[kind] = sorted(p.name for p in Path(args.adapters).glob(f"{kind}*"))
        if kind in args.kinds:
            for name in names[kind]:
                engine.add_adapter(name, Path(args.adapters) / name)
    vocab = model.get_input_embeddings().num_embeddings
    out = {}
    for kind in args.kinds:
        for batch in args.batch:
            g = torch.Generator().manual_seed(batch)
            requests = [Request(torch.randint(10, vocab - 10, (args.prompt_len,), generator=g).tolist(),
                                names[kind][i % len(names[kind])],
                                SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)) for i in range(batch)]
            engine.generate([Request(list(r.prompt_ids), r.adapter, r.params) for r in requests[:2]])  # warm-up
            engine.stats.clear()
            engine.generate(requests)
            out[f"{kind}/{batch}"] = engine.stats["decode_tokens"] / engine.stats["decode_seconds"]
    print("RESULT " + json.dumps(out))


def load_model(name: str, dtype: str):
    """(model, tokenizer) of ``--model``."""
    if name == "smollm2":
        from paratune.models import load_backbone

        backbone = load_backbone(dtype=dtype)
        return backbone.model, backbone.tokenizer
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=30,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval().to(getattr(torch, dtype))
    model.config._attn_implementation = "sdpa"
    return model, None


def run_worker(src: Path, adapters: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--src", str(src), "--adapters", str(adapters), "--dtype", args.dtype,
           "--model", args.model,
           "--threads", str(args.threads), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens),
           "--kinds", *args.kinds, "--batch", *map(str, args.batch)]
    env = {**os.environ, "PYTHONPATH": str(Path(src) / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    line = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"worker for {src} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-src", help="root of the other checkout (the 'before')")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "overhead"],
                        help="smollm2, or overhead: a d=64, 30-layer random Llama whose decode step is the engine's "
                        "own cost (defaults then: --kinds base --batch 1 --new-tokens 300 --threads 1)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--kinds", nargs="+", choices=["base", "para", "lora"])
    parser.add_argument("--batch", nargs="+", type=int)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output", default="engine_ab.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--adapters", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    overhead = args.model == "overhead"
    args.kinds = args.kinds or (["base"] if overhead else ["base", "para", "lora"])
    args.batch = args.batch or ([1] if overhead else [1, 8, 32])
    args.new_tokens = args.new_tokens or (300 if overhead else 32)
    args.threads = args.threads or (1 if overhead else 2)
    if args.worker:
        worker(args)
        return 0
    if not args.compare_src or not (Path(args.compare_src) / "src" / "paratune" / "__init__.py").is_file():
        parser.error(f"--compare-src must be a paratune checkout (with src/paratune), got {args.compare_src!r}")
    sys.path.insert(0, str(HERE / "src"))
    from paratune.bench.adapters import write_adapters
    from paratune.models import load_backbone

    trees = {"after": HERE, "before": Path(args.compare_src).resolve()}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(args.model, "float32")[0] if args.model != "smollm2" else load_backbone().model
        for kind in {"para", "lora"} & set(args.kinds):
            write_adapters(model, kind, max(args.batch), Path(tmp))
        del model
        for r in range(args.rounds):
            order = ["after", "before"] if r % 2 == 0 else ["before", "after"]
            result = {name: run_worker(trees[name], Path(tmp), args) for name in order}
            rounds.append(result)
            print(f"round {r}: " + ", ".join(f"{cell} {result['after'][cell] / result['before'][cell]:.3f}"
                                             for cell in result["after"]), flush=True)
    cells = list(rounds[0]["after"])
    summary = {}
    table = ["| kind | batch | after tok/s | before tok/s | after / before |", "|---|---|---|---|---|"]
    for cell in cells:
        ratios = [r["after"][cell] / r["before"][cell] for r in rounds]
        after = statistics.median(r["after"][cell] for r in rounds)
        before = statistics.median(r["before"][cell] for r in rounds)
        summary[cell] = {"after": after, "before": before, "ratio": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)}
        kind, batch = cell.split("/")
        table.append(f"| {kind} | {batch} | {after:.1f} | {before:.1f} | {statistics.median(ratios):.3f} "
                     f"({min(ratios):.3f}-{max(ratios):.3f}) |")
    print(f"\ndecode tokens/s, after / before ({args.model}, {args.dtype}, {args.rounds} rounds, median (min-max)):\n")
    print("\n".join(table))
    commits = {name: subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() for name, path in trees.items()}
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    command = " ".join(["python", "benchmarks/engine_ab.py", *(argv if argv is not None else sys.argv[1:])])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"command": command, "commits": commits,
                                  "machine": {"platform": platform.platform(), "lscpu": cpu}, "rounds": rounds,
                                  "summary": summary}, indent=1))
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    output.with_suffix(".md").write_text("\n".join([
        f"# Engine A/B: decode tokens/s, this checkout vs another ({args.model}, {args.dtype})", "",
        f"Command: `{command}`  ", f"Commits: after {commits['after']}, before {commits['before']}.  ",
        f"Machine: {model}, {os.cpu_count()} CPUs; {args.threads} threads per worker. Median (min-max) over "
        f"{args.rounds} rounds, one fresh process per checkout per round, the order flipped every round.", "",
        *table, ""]))
    print(f"\nwrote {output} and {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
