"""Per-decode-step overhead of this checkout's engine against another checkout's: the Python and op-dispatch cost
around the kernels, which is what an engine refactor can change.

The model is a random-weight Llama with SmolLM2-135M's 30 layers but d=64, so every matmul is nearly free and a
decode step's time is the engine's own work per layer and per step. One row, fp32, SDPA, one thread; each round
runs one fresh process per checkout (order flipped every round) and reports ms per decode step over 300 steps.

    git worktree add /tmp/before <commit>
    python benchmarks/step_overhead_ab.py --compare-src /tmp/before --rounds 6 --output overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def worker(src: str, steps: int) -> float:
    sys.path.insert(0, str(Path(src) / "src"))
    import torch
    import transformers

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=30,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config).eval()
    model.config._attn_implementation = "sdpa"
    from paratune.engine import Engine, Request, SamplingParams

    engine = Engine(model, max_batch=4)
    engine.generate([Request([5, 6, 7], params=SamplingParams(max_tokens=20, ignore_eos=True))])  # warm-up
    engine.stats.clear()
    engine.generate([Request([5, 6, 7, 8], params=SamplingParams(max_tokens=steps, ignore_eos=True))])
    return 1000 * engine.stats["decode_seconds"] / engine.stats["decode_steps"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare-src", required=True, help="root of the other checkout (the 'before')")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--output", default="step_overhead_ab.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT", json.dumps(worker(args.worker, args.steps)))
        return 0
    trees = {"after": str(HERE), "before": str(Path(args.compare_src).resolve())}
    results: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in (["after", "before"] if r % 2 == 0 else ["before", "after"]):
            proc = subprocess.run([sys.executable, __file__, "--compare-src", args.compare_src, "--steps",
                                   str(args.steps), "--worker", trees[name]], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": trees[name] + "/src"}, timeout=1800)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                raise RuntimeError(f"worker for {trees[name]} failed:\n{proc.stderr[-3000:]}")
            results[name].append(json.loads(line.split(" ", 1)[1]))
    after, before = statistics.median(results["after"]), statistics.median(results["before"])
    ratios = [a / b for a, b in zip(results["after"], results["before"])]
    commits = {name: subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() for name, path in trees.items()}
    command = " ".join(["python", "benchmarks/step_overhead_ab.py", *(argv if argv is not None else sys.argv[1:])])
    summary = {"after_ms": after, "before_ms": before, "ratio_of_medians": after / before,
               "round_ratios": ratios}
    print(f"ms per decode step, after {[round(x, 2) for x in results['after']]}, "
          f"before {[round(x, 2) for x in results['before']]}")
    print(f"median: after {after:.2f} ms, before {before:.2f} ms, after / before {after / before:.3f} "
          f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"command": command, "commits": commits, "results": results, "summary": summary,
                                  "cpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout}, indent=1))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
