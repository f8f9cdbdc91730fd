"""What each of the fast path's op-level choices buys the engine: one engine (SmolLM2-135M), decode tokens/s and
the prefill time of the rows' 64-token prompts with all choices on versus some switched off, base rows and
every row on its own PARA adapter, rounds interleaved (the first round warms up), medians of per-round ratios.

    python -m paratune.bench.fast_path_ab [--off attention norm_rope] [--rows 1,8,32,64] [--dtype float32]

Choices (attributes of ``engine/fast_decode.FastDecode``, switched between rounds on the same engine):

* ``attention``: SDPA on the KV heads directly / grouped decode matmuls (``direct_sdpa``, ``direct_decode``);
* ``norm_rope``: RMSNorm as one ``F.rms_norm``, RoPE once over q and k (``fused_norm``, ``fused_rope``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

CHOICES = {"attention": ("direct_sdpa", "direct_decode"), "norm_rope": ("fused_norm", "fused_rope")}


def main(argv=None) -> None:
    from paratune.bench.profile_step import decode_seconds_per_step, prefill_seconds, write_adapters
    from paratune.engine import Engine
    from paratune.models import load_backbone

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--off", nargs="+", default=list(CHOICES), choices=list(CHOICES),
                        help="variants: each of these switched off alone (default: each choice)")
    parser.add_argument("--rows", default="1,8,32,64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per round")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [int(v) for v in args.rows.split(",")]
    backbone = load_backbone()
    engine = Engine(backbone.model.eval().to(getattr(torch, args.dtype)), backbone.tokenizer, max_batch=max(rows),
                    max_seq_len=160)
    fast = engine.fast_decode
    on = {attr: getattr(fast, attr) for attrs in CHOICES.values() for attr in attrs}
    variants = {"all on": on, **{f"{name} off": {**on, **dict.fromkeys(CHOICES[name], False)} for name in args.off}}
    print("choices on this engine:", on)
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(write_adapters("para", max(rows), Path(tmp))):
            engine.add_adapter(f"t{i}", path)
    g = torch.Generator().manual_seed(0)

    def random_prompts(n: int) -> list[list[int]]:
        return [torch.randint(100, 40000, (64,), generator=g).tolist() for _ in range(n)]

    names = [n for n in variants if n != "all on"]
    print(f"\n{args.dtype}: all on vs each variant (median of {args.rounds} interleaved rounds)\n")
    print("| rows | kind | decode tok/s all on | " + " | ".join(f"{n}: tok/s, on/off" for n in names)
          + " | prefill ms all on | " + " | ".join(f"{n}: ms, on/off time" for n in names) + " |")
    print("|---|---|---|" + "---|" * len(names) + "---|" + "---|" * len(names))
    for n in rows:
        for kind in ("base", "para"):
            adapters = [None if kind == "base" else f"t{i}" for i in range(n)]
            decode, prefill = ({v: [] for v in variants} for _ in range(2))
            for r in range(args.rounds + 1):
                for variant, settings in variants.items():
                    for attr, value in settings.items():
                        setattr(fast, attr, value)
                    seconds = (decode_seconds_per_step(engine, adapters, args.steps, g),
                               prefill_seconds(engine, random_prompts(len(adapters)), adapters))
                    if r:
                        decode[variant].append(n / seconds[0])
                        prefill[variant].append(seconds[1])
            med = {v: statistics.median(x) for v, x in decode.items()}
            ratio = {v: statistics.median([a / b for a, b in zip(decode["all on"], decode[v])]) for v in names}
            pmed = {v: 1e3 * statistics.median(x) for v, x in prefill.items()}
            pratio = {v: statistics.median([a / b for a, b in zip(prefill["all on"], prefill[v])]) for v in names}
            print(f"| {n} | {kind} | {med['all on']:.1f} | "
                  + " | ".join(f"{med[v]:.1f}, {ratio[v]:.2f}" for v in names)
                  + f" | {pmed['all on']:.0f} | " + " | ".join(f"{pmed[v]:.0f}, {pratio[v]:.2f}" for v in names)
                  + " |", flush=True)
    for attr, value in on.items():
        setattr(fast, attr, value)


if __name__ == "__main__":
    main()
