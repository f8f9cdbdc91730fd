"""Does torch.compile pay for the engine's decode step on this CPU? Eager versus compiled, interleaved rounds.

    python -m paratune.bench.compile_check --output docs/results/compile

One process, one Engine (SmolLM2-135M fp32, ``--threads`` threads) with ``max(batches)`` KV slots of
``--capacity`` tokens; every slot is prefilled once with a ``--prompt-len`` token prompt on its own random PARA
adapter (r=16). A measured decode step is the engine's decode forward (tokens, positions, mask, the slot cache
and the engine's hooks, exactly as ``Engine._decode`` calls the model) plus a greedy argmax and its host
transfer, for the rows in slots [0, B): the plan and StepRows are the ones ``_decode_layout`` builds for such a
contiguous batch. "base" zeroes the hooks' user counts, so every scaling hook is skipped (no PARA row running);
"para" runs every row on a distinct adapter. Each step rewrites the same position, so every step costs the same.

Variants:

* ``eager``: the engine's path as it is: attention over the batch's longest length (``prompt_len + 1``), which
  grows by one every real step, so its shapes are not static;
* ``eager-static``: the smallest change to a static shape: attend over the whole slot (``capacity``) with the
  mask stopping each row at its own length (the cache plan's ``length`` = capacity);
* ``compiled[<mode>]``: ``torch.compile(decode_forward, mode=<mode>, dynamic=False)`` of the static variant,
  one graph per (batch bucket, kind); compile seconds = the first call's wall time.

Rounds interleave every variant of every (kind, batch) so that load from other processes hits them alike;
medians and min-max of per-round tokens/s (batch / mean step time of the round) are reported.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..engine import Engine, Request, SamplingParams
from ..engine.hooks import StepRows
from ..engine.kv_cache import decode_mask
from ..models import load_backbone
from .profile_step import write_adapters


class DecodeBench:
    def __init__(self, max_batch: int, capacity: int, prompt_len: int):
        backbone = load_backbone()
        self.model = backbone.model
        self.engine = engine = Engine(self.model, backbone.tokenizer, max_batch=max_batch, max_seq_len=capacity,
                                   max_prefill_tokens=max_batch * prompt_len)
        self.capacity, self.prompt_len = capacity, prompt_len
        with tempfile.TemporaryDirectory() as tmp:
            for i, path in enumerate(write_adapters("para", max_batch, Path(tmp))):
                engine.add_adapter(f"t{i}", path)
        g = torch.Generator().manual_seed(0)
        for i in range(max_batch):
            ids = torch.randint(100, 40000, (prompt_len,), generator=g).tolist()
            engine.add_request(Request(ids, adapter=f"t{i}", params=SamplingParams(max_tokens=64, ignore_eos=True)))
        engine.step()  # one packed prefill: every slot's KV and PARA deltas
        assert len(engine.rows) == max_batch, "every request should be admitted in one prefill"
        self.para_users = collections.Counter(engine.hooks.users)
        self.base_users = collections.Counter({k: 0 for k in engine.hooks.users})
        self.position = prompt_len  # every measured step writes this position and attends over [0, position]

    def setup(self, kind: str, batch: int, static: bool):
        """The engine state of a decode step of the rows in slots [0, batch): plan, StepRows, hook users."""
        engine = self.engine
        engine.hooks.users = self.para_users if kind == "para" else self.base_users
        plan = engine.cache.plan_decode(list(range(batch)), engine._positions[:0], 0, engine.device)
        positions = torch.full((batch,), self.position, dtype=torch.long)
        plan.positions = positions
        plan.length = self.capacity if static else self.position + 1
        engine.cache.plan = plan
        engine.hooks.step = StepRows("decode", plan.slots, view=(0, batch))
        tokens = engine._next_tokens[:batch].clone()
        mask = decode_mask(positions + 1, plan.length, engine.dtype)
        return tokens, positions, mask

    def decode_forward(self, tokens, positions, mask):
        return self.model(input_ids=tokens[:, None], position_ids=positions[:, None], attention_mask=mask,
                          past_key_values=self.engine.cache, use_cache=True).logits[:, -1]


def step_fn(bench: DecodeBench, forward, args):
    def step():
        logits = forward(*args)
        return logits.argmax(-1).tolist()
    return step


def time_steps(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--kinds", default="base,para")
    parser.add_argument("--modes", default="default", help="torch.compile modes, comma-separated ('' for none)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.6, help="target time of one variant's round")
    parser.add_argument("--capacity", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="folder for compile.md and compile.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = 64  # one graph per (bucket, kind, mode): more than the default 8
    batches = [int(b) for b in args.batches.split(",")]
    kinds = args.kinds.split(",")
    modes = [m for m in args.modes.split(",") if m]
    command = "python -m paratune.bench.compile_check " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    bench = DecodeBench(max(batches), args.capacity, args.prompt_len)
    print(f"setup {time.perf_counter() - t0:.0f}s, load average {os.getloadavg()}", flush=True)

    variants = ["eager", "eager-static"] + [f"compiled[{m}]" for m in modes]
    compiled = {m: torch.compile(bench.decode_forward, mode=m, dynamic=False) for m in modes}
    cells = [(k, b) for k in kinds for b in batches]
    compile_seconds: dict[str, dict[str, float]] = {}
    steps_per_round: dict[str, int] = {}
    results: dict[str, dict[str, list[float]]] = {f"{k}/{b}": {v: [] for v in variants} for k, b in cells}

    def run(kind, batch, variant, n):
        static = variant != "eager"
        forward = bench.decode_forward if not variant.startswith("compiled") else compiled[variant[9:-1]]
        step = step_fn(bench, forward, bench.setup(kind, batch, static))
        return time_steps(step, n)

    with torch.inference_mode():
        # compile (first call) and warm every cell; the eager step time sets the steps per round
        for kind, batch in cells:
            cell = f"{kind}/{batch}"
            eager = min(run(kind, batch, "eager", 1) for _ in range(3))
            steps_per_round[cell] = max(3, round(args.seconds / eager))
            run(kind, batch, "eager-static", 2)
            compile_seconds[cell] = {}
            for m in modes:
                start = time.perf_counter()
                run(kind, batch, f"compiled[{m}]", 1)
                compile_seconds[cell][m] = time.perf_counter() - start
                run(kind, batch, f"compiled[{m}]", 2)
            print(f"{cell}: eager {eager * 1000:.1f} ms/step, {steps_per_round[cell]} steps/round, compile "
                  + ", ".join(f"{m} {s:.0f}s" for m, s in compile_seconds[cell].items()), flush=True)
        # a check that the compiled graph computes the same logits as eager
        agreement = {}
        for kind, batch in cells:
            args_ = bench.setup(kind, batch, True)
            ref = bench.decode_forward(*args_)
            agreement[f"{kind}/{batch}"] = {m: float((compiled[m](*args_) - ref).abs().max()) for m in modes}
            ref_dyn = bench.decode_forward(*bench.setup(kind, batch, False))
            agreement[f"{kind}/{batch}"]["eager-static"] = float((ref - ref_dyn).abs().max())
        for r in range(args.rounds):
            for kind, batch in cells:
                cell = f"{kind}/{batch}"
                for variant in variants:
                    seconds = run(kind, batch, variant, steps_per_round[cell])
                    results[cell][variant].append(batch / seconds)
            print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f}s)", flush=True)
    bench.engine.hooks.step = None
    from torch._dynamo.utils import counters
    dynamo_counters = {"graph_breaks": dict(counters["graph_break"]), "unique_graphs": counters["stats"]["unique_graphs"]}

    summary = {}
    for cell, per in results.items():
        eager_median = statistics.median(per["eager"])
        summary[cell] = {v: {"median_tok_s": statistics.median(xs), "min_tok_s": min(xs), "max_tok_s": max(xs),
                             "ratio_vs_eager": statistics.median(xs) / eager_median,
                             # per-round ratio to that round's eager: robust to drift between rounds
                             "round_ratios": [x / e for x, e in zip(xs, per["eager"])]}
                         for v, xs in per.items()}
    report = {"command": command, "torch": torch.__version__, "python": platform.python_version(),
              "threads": args.threads, "capacity": args.capacity, "prompt_len": args.prompt_len,
              "rounds": args.rounds, "steps_per_round": steps_per_round, "compile_seconds": compile_seconds,
              "max_abs_logit_diff": agreement, "dynamo_counters": dynamo_counters,
              "load_average_end": list(os.getloadavg()), "results": summary, "raw_tok_s": results,
              "total_seconds": time.perf_counter() - t0}
    md = render(report, variants)
    print(md)
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compile.json").write_text(json.dumps(report, indent=1))
        (out / "compile.md").write_text(md)
    return 0


def render(report: dict, variants: list[str]) -> str:
    lines = [f"# torch.compile of the engine's decode step on CPU ({report['threads']} threads)\n",
             f"`{report['command']}` (torch {report['torch']}, Python {report['python']}); "
             f"{report['rounds']} interleaved rounds; prompt {report['prompt_len']} tokens, slot capacity "
             f"{report['capacity']}. tokens/s = batch / step time; median (min-max) over rounds; "
             "ratio = median of per-round ratios to eager.\n",
             "| rows | batch | " + " | ".join(variants) + " | " + " | ".join(f"{v} / eager" for v in variants[1:])
             + " | compile s |",
             "|---|---:|" + "---:|" * (2 * len(variants) - 1) + "---:|"]
    for cell, per in report["results"].items():
        kind, batch = cell.split("/")
        values = [f"{per[v]['median_tok_s']:.0f} ({per[v]['min_tok_s']:.0f}-{per[v]['max_tok_s']:.0f})"
                  for v in variants]
        ratios = [f"{statistics.median(per[v]['round_ratios']):.2f}" for v in variants[1:]]
        comp = ", ".join(f"{s:.0f}" for s in report["compile_seconds"][cell].values()) or "-"
        lines.append(f"| {kind} | {batch} | " + " | ".join(values) + " | " + " | ".join(ratios) + f" | {comp} |")
    lines.append("\nmax |logit difference| versus eager-static: " + json.dumps(report["max_abs_logit_diff"]))
    lines.append(f"\ndynamo: {json.dumps(report['dynamo_counters'])}; load average at the end "
                 f"{report['load_average_end']}")
    lines.append(f"\nTotal run: {report['total_seconds']:.0f} s.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
