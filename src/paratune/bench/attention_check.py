"""Which SDPA call pays for the engine's attention on this CPU? Per layer call, SmolLM2-135M's shapes (9 query
heads, 3 KV heads, head_dim 64), interleaved rounds, median microseconds:

* ``wrapper``: transformers' ``sdpa_attention_forward`` as the model calls it (given a mask, it repeats K/V to
  every query head before SDPA on CPU);
* ``gqa``: ``F.scaled_dot_product_attention(..., enable_gqa=True)`` on the KV heads as they are (decode: with the
  engine's per-row mask over a cache view; prefill: ``is_causal``, no mask);
* ``grouped``: decode as two matmuls on (rows, kv_heads, group, head_dim) queries, softmax in fp32.

    python -m paratune.bench.attention_check [--rows 1,8,32,64] [--length 96] [--rounds 7]
    python -m paratune.bench.attention_check --engine [--dtype bfloat16]

``engine/fast_decode.py`` uses ``gqa`` where this table shows it pays (fp32 decode, every prefill), ``grouped``
for fp32 decode from 32 rows. ``--engine``: what that buys the engine (SmolLM2-135M, base and every row on its
own PARA adapter): decode tokens/s and prefill time with the direct calls on and off, one engine, rounds
interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from paratune.engine.kv_cache import causal_mask

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


class _Module:  # what the wrapper reads from an attention module
    num_key_value_groups, is_causal, training = HEADS // KV_HEADS, True, False


def grouped(q, k, v, mask, scale):
    rows, length = q.shape[0], k.shape[2]
    scores = torch.matmul(q.view(rows, KV_HEADS, -1, HEAD_DIM), k.transpose(-1, -2))
    scores = torch.add(mask.view(rows, 1, 1, length), scores, alpha=scale)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v).view(rows, 1, HEADS, HEAD_DIM)


def timed(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def compare(label: str, ways: dict, rounds: int, calls: int = 30) -> None:
    reference = ways["wrapper"]().float()
    errors = {name: (fn().float() - reference).abs().max().item() for name, fn in ways.items()}
    for fn in ways.values():
        timed(fn, 5)
    times = {name: [] for name in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            times[name].append(timed(fn, calls))
    median = {name: statistics.median(v) for name, v in times.items()}
    cells = " | ".join(f"{median[n]:.0f} ({median[n] / median['wrapper']:.2f}x, err {errors[n]:.0e})" for n in ways)
    print(f"| {label} | {cells} |", flush=True)


def engine_ab(rows: list[int], dtype: torch.dtype, rounds: int, steps: int = 16) -> None:
    import tempfile
    from pathlib import Path

    from paratune.bench.profile_step import decode_seconds_per_step, write_adapters
    from paratune.engine import Engine, Request, SamplingParams
    from paratune.models import load_backbone

    backbone = load_backbone()
    engine = Engine(backbone.model.eval().to(dtype), backbone.tokenizer, max_batch=max(rows), max_seq_len=160)
    fast = engine.fast_decode
    settings = {"direct": (fast.direct_sdpa, fast.direct_decode), "wrapper": (False, False)}
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(write_adapters("para", max(rows), Path(tmp))):
            engine.add_adapter(f"t{i}", path)
    g = torch.Generator().manual_seed(0)

    def prefill_seconds(adapters: list[str | None]) -> float:
        for adapter in adapters:
            engine.add_request(Request(torch.randint(100, 40000, (64,), generator=g).tolist(), adapter=adapter,
                                       params=SamplingParams(max_tokens=1, ignore_eos=True)))
        start = time.perf_counter()
        engine.step()
        return time.perf_counter() - start

    name = str(dtype).split(".")[1]
    print(f"\n{name}, engine: direct / wrapper (median of {rounds} interleaved rounds)\n")
    print("| rows | kind | decode tok/s direct | wrapper | ratio | prefill 64-token prompts ms direct | wrapper | "
          "time ratio |\n|---|---|---|---|---|---|---|---|")
    for n in rows:
        for kind in ("base", "para"):
            adapters = [None if kind == "base" else f"t{i}" for i in range(n)]
            decode, prefill = ({way: [] for way in settings} for _ in range(2))
            for r in range(rounds + 1):
                for way, (fast.direct_sdpa, fast.direct_decode) in settings.items():
                    seconds = decode_seconds_per_step(engine, adapters, steps, g), prefill_seconds(adapters)
                    if r:  # the first round warms up
                        decode[way].append(n / seconds[0])
                        prefill[way].append(seconds[1])
            ratio = statistics.median([a / b for a, b in zip(decode["direct"], decode["wrapper"])])
            time_ratio = statistics.median([a / b for a, b in zip(prefill["direct"], prefill["wrapper"])])
            print(f"| {n} | {kind} | {statistics.median(decode['direct']):.1f} | "
                  f"{statistics.median(decode['wrapper']):.1f} | {ratio:.2f} | "
                  f"{1e3 * statistics.median(prefill['direct']):.0f} | {1e3 * statistics.median(prefill['wrapper']):.0f}"
                  f" | {time_ratio:.2f} |", flush=True)
    fast.direct_sdpa, fast.direct_decode = settings["direct"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,8,32,64")
    parser.add_argument("--length", type=int, default=96, help="positions attended at decode")
    parser.add_argument("--prompts", default="64,512", help="prompt lengths at prefill")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", action="store_true", help="the engine A/B instead of single calls")
    parser.add_argument("--dtype", default="float32", help="--engine: the model's dtype")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.engine:
        engine_ab([int(v) for v in args.rows.split(",")], getattr(torch, args.dtype), args.rounds)
        return
    module, scale = _Module(), HEAD_DIM ** -0.5
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).split(".")[1]
        print(f"\n{name}, decode over {args.length} positions (cache view of a 256-token slot), us per call\n")
        print("| rows | wrapper | gqa | grouped |\n|---|---|---|---|")
        for rows in map(int, args.rows.split(",")):
            cache = torch.randn(2, rows, KV_HEADS, 256, HEAD_DIM, dtype=dtype)
            k, v = cache[0, :, :, : args.length], cache[1, :, :, : args.length]
            q = torch.randn(rows, HEADS, 1, HEAD_DIM, dtype=dtype)
            mask = torch.zeros(rows, 1, 1, args.length, dtype=dtype)
            mask[1:, ..., args.length // 2:] = torch.finfo(dtype).min  # rows of different lengths
            compare(f"{rows}", {
                "wrapper": lambda: sdpa_attention_forward(module, q, k, v, mask, scaling=scale, dropout=0.0)[0],
                "gqa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                              enable_gqa=True).transpose(1, 2),
                "grouped": lambda: grouped(q, k, v, mask, scale)}, args.rounds)
        print(f"\n{name}, prefill of one prompt, us per call\n")
        print("| tokens | wrapper | gqa |\n|---|---|---|")
        for length in map(int, args.prompts.split(",")):
            q = torch.randn(1, HEADS, length, HEAD_DIM, dtype=dtype)
            k, v = torch.randn(2, 1, KV_HEADS, length, HEAD_DIM, dtype=dtype)
            mask = causal_mask(length, dtype, "cpu")
            compare(f"{length}", {
                "wrapper": lambda: sdpa_attention_forward(module, q, k, v, mask, scaling=scale, dropout=0.0)[0],
                "gqa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                              enable_gqa=True).transpose(1, 2)}, args.rounds)


if __name__ == "__main__":
    main()
