"""Which SDPA call pays for the engine's attention on this CPU? Per layer call, SmolLM2-135M's shapes (9 query
heads, 3 KV heads, head_dim 64), interleaved rounds, median microseconds:

* ``wrapper``: transformers' ``sdpa_attention_forward`` as the model calls it (given a mask, it repeats K/V to
  every query head before SDPA on CPU);
* ``gqa``: ``F.scaled_dot_product_attention(..., enable_gqa=True)`` on the KV heads as they are (decode: with the
  engine's per-row mask over a cache view; prefill: ``is_causal``, no mask);
* ``grouped``: decode as two matmuls on (rows, kv_heads, group, head_dim) queries, softmax in fp32.

    python -m paratune.bench.attention_check [--rows 1,8,32,64] [--length 96] [--rounds 7]

``engine/fast_decode.py`` uses ``gqa`` where this table shows it pays (fp32 decode, every prefill), ``grouped``
for fp32 decode from 32 rows; what that buys the whole engine: ``python -m paratune.bench.fast_path_ab --off
attention``.
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1,8,32,64")
    parser.add_argument("--length", type=int, default=96, help="positions attended at decode")
    parser.add_argument("--prompts", default="64,512", help="prompt lengths at prefill")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
