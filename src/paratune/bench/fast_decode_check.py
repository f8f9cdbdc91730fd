"""The engine's hand-written decode step (engine/fast_decode.py) vs the transformers forward, decode-only
tokens/s, base rows and rows each on a distinct random PARA adapter, interleaved rounds (two engines, two copies
of the model).

    python -m paratune.bench.fast_decode_check 1,8,32
"""
import sys, statistics, tempfile
from pathlib import Path
import torch
torch.set_num_threads(2)
from paratune.models import load_backbone
from paratune.engine import Engine
from paratune.bench.profile_step import decode_seconds_per_step, write_adapters
STEPS = 24
b = load_backbone(); m = b.model.eval()
batches = [int(x) for x in sys.argv[1].split(",")]
B = max(batches)
engines = {f: Engine(load_backbone().model.eval(), b.tokenizer, max_batch=B, max_seq_len=160, fast_decode=f) for f in (True, False)}
with tempfile.TemporaryDirectory() as tmp:
    paths = write_adapters("para", B, Path(tmp))
    for e in engines.values():
        for i, p in enumerate(paths):
            e.add_adapter(f"t{i}", p)
g = torch.Generator().manual_seed(0)
def rnd(engine, n, kind):
    return n / decode_seconds_per_step(engine, [None if kind == "base" else f"t{i}" for i in range(n)], STEPS, g)
for n in batches:
    for kind in ("base", "para"):
        res = {True: [], False: []}
        for f in (True, False): rnd(engines[f], n, kind)
        for r in range(3):
            for f in (True, False):
                res[f].append(rnd(engines[f], n, kind))
        a, s = statistics.median(res[True]), statistics.median(res[False])
        print(f"batch {n} {kind}: fast {a:.1f} tok/s, transformers forward {s:.1f} tok/s, fast/forward {a/s:.2f}", flush=True)
