"""PARA's prefill overhead: one packed prefill of BATCH prompts of PLEN tokens, base rows vs every row on its
own PARA adapter, in one engine, rounds interleaved; optional torch.profiler tables.

    python -m paratune.bench.prefill_check 32 64 5 [--profile]
"""
import sys, time, tempfile, statistics
from pathlib import Path
import torch
torch.set_num_threads(2)
from paratune.engine import Engine, Request, SamplingParams
from paratune.models import load_backbone
from paratune.bench.profile_step import write_adapters

batch, plen = int(sys.argv[1]), int(sys.argv[2])
b = load_backbone()
engine = Engine(b.model, b.tokenizer, max_batch=batch, max_seq_len=plen + 8, max_prefill_tokens=batch * plen)
with tempfile.TemporaryDirectory() as tmp:
    for i, p in enumerate(write_adapters("para", batch, Path(tmp))):
        engine.add_adapter(f"t{i}", p)
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(100, 40000, (plen,), generator=g).tolist() for _ in range(batch)]

def one(kind):
    for i, ids in enumerate(prompts):
        engine.add_request(Request(ids, adapter=None if kind == "base" else f"t{i}",
                                   params=SamplingParams(max_tokens=1, ignore_eos=True)))
    t = time.perf_counter()
    engine.step()
    dt = time.perf_counter() - t
    while engine.has_work():
        engine.step()
    return dt

for k in ("base", "para"): one(k)
times = {"base": [], "para": []}
for r in range(int(sys.argv[3]) if len(sys.argv) > 3 else 5):
    for k in ("base", "para"):
        times[k].append(one(k))
for k, v in times.items():
    print(k, "prefill ms median", round(1000 * statistics.median(v), 1), "min", round(1000 * min(v), 1), "max", round(1000 * max(v), 1))
print("para/base", round(statistics.median([p / q for p, q in zip(times["para"], times["base"])]), 3))
if "--profile" in sys.argv:
    for k in ("base", "para"):
        with torch.profiler.profile() as prof:
            one(k)
        print(k); print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
