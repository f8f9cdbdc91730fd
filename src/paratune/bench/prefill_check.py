"""PARA's prefill overhead: one packed prefill of BATCH prompts of PLEN tokens, base rows vs every row on its
own PARA adapter, rounds interleaved; optional torch.profiler tables. ``--forward``: also an engine that
prefills through the transformers forward (``fast_decode=False``), to measure what the hand-written prefill with
the packed weights buys; ``--dtype bfloat16`` for the model's dtype.

    python -m paratune.bench.prefill_check 32 64 5 [--profile] [--forward] [--dtype bfloat16]
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from paratune.bench.profile_step import prefill_seconds, write_adapters
from paratune.engine import Engine
from paratune.models import load_backbone

torch.set_num_threads(2)
batch, plen = int(sys.argv[1]), int(sys.argv[2])
rounds = int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3].isdigit() else 5
dtype = getattr(torch, sys.argv[sys.argv.index("--dtype") + 1]) if "--dtype" in sys.argv else torch.float32
b = load_backbone()
engines = {"fast": Engine(b.model.to(dtype), b.tokenizer, max_batch=batch, max_seq_len=plen + 8,
                          max_prefill_tokens=batch * plen)}
if "--forward" in sys.argv:  # its own model: an engine installs its attention on the model it serves
    engines["forward"] = Engine(load_backbone().model.to(dtype), b.tokenizer, max_batch=batch, max_seq_len=plen + 8,
                                max_prefill_tokens=batch * plen, fast_decode=False)
with tempfile.TemporaryDirectory() as tmp:
    for i, p in enumerate(write_adapters("para", batch, Path(tmp))):
        for engine in engines.values():
            engine.add_adapter(f"t{i}", p)
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(100, 40000, (plen,), generator=g).tolist() for _ in range(batch)]


def one(engine, kind):
    return prefill_seconds(engine, prompts, [None if kind == "base" else f"t{i}" for i in range(len(prompts))])


cells = [(e, k) for e in engines for k in ("base", "para")]
for e, k in cells:
    one(engines[e], k)
times = {cell: [] for cell in cells}
for r in range(rounds):
    for e, k in cells:
        times[(e, k)].append(one(engines[e], k))
print(f"{batch} x {plen} tokens, {str(dtype).split('.')[1]}, {rounds} interleaved rounds")
for (e, k), v in times.items():
    print(f"{e} {k}: prefill ms median {1000 * statistics.median(v):.1f} (min {1000 * min(v):.1f}, max "
          f"{1000 * max(v):.1f}), {batch * plen / statistics.median(v):.0f} tok/s")
for e in engines:
    print(f"{e} para/base", round(statistics.median([p / q for p, q in zip(times[(e, 'para')], times[(e, 'base')])]), 3))
if "forward" in engines:
    for k in ("base", "para"):
        print(f"{k} fast/forward time", round(statistics.median(
            [p / q for p, q in zip(times[("fast", k)], times[("forward", k)])]), 3))
if "--profile" in sys.argv:
    for k in ("base", "para"):
        with torch.profiler.profile() as prof:
            one(engines["fast"], k)
        print(k)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
