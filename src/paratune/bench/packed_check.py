"""F.linear vs oneDNN-prepacked weights (engine/packed_weights.py).

    python -m paratune.bench.packed_check                        # kernels: SmolLM2-135M's matrix shapes at 1, 8,
                                                                 # 32 rows, fp32 and bf16, microseconds per call
    python -m paratune.bench.packed_check engine 1,8,32 bfloat16 # decode steps of the engine, packed vs unpacked
                                                                 # (two engines, interleaved rounds, base and PARA)
"""
import sys
import time

import torch
import torch.nn.functional as F

from paratune.engine.packed_weights import _HINT

torch.set_num_threads(2)
SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (in, out): q/o, k/v, gate/up, down, head


def per_call(fn, reps: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def main(rows=(1, 8, 32)) -> None:
    torch.manual_seed(0)
    print("| dtype | in x out | rows | F.linear us | packed us | packed / F.linear | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for k, n in SHAPES:
            weight = torch.randn(n, k).to(dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, _HINT[dtype])
            reps = 20 if n > 10000 else 300
            for m in rows:
                x = torch.randn(m, 1, k).to(dtype)
                plain = per_call(lambda: F.linear(x, weight), reps)
                fast = per_call(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), reps)
                diff = (torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "").float()
                        - F.linear(x, weight).float()).abs().max().item()
                print(f"| {str(dtype).split('.')[1]} | {k} x {n} | {m} | {plain:.0f} | {fast:.0f} | "
                      f"{fast / plain:.2f} | {diff:.1e} |", flush=True)


def engine_ab(batches, dtype: torch.dtype, steps: int = 16) -> None:
    import statistics
    import tempfile
    from pathlib import Path

    from paratune.bench.profile_step import decode_seconds_per_step, write_adapters
    from paratune.engine import Engine
    from paratune.models import load_backbone

    backbone = load_backbone()
    engines = {packed: Engine(load_backbone().model.eval().to(dtype), backbone.tokenizer, max_batch=max(batches),
                              max_seq_len=160, packed_weights=packed) for packed in (True, False)}
    print("packing:", {packed: e.fast_decode.packing if e.fast_decode else None for packed, e in engines.items()})
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_adapters("para", max(batches), Path(tmp))
        for engine in engines.values():
            for i, path in enumerate(paths):
                engine.add_adapter(f"t{i}", path)
    g = torch.Generator().manual_seed(0)
    for n in batches:
        for kind in ("base", "para"):
            adapters = [None if kind == "base" else f"t{i}" for i in range(n)]
            for engine in engines.values():  # warm-up
                decode_seconds_per_step(engine, adapters, steps, g)
            rates = {packed: [] for packed in engines}
            for _ in range(2):
                for packed, engine in engines.items():
                    rates[packed].append(n / decode_seconds_per_step(engine, adapters, steps, g))
            on, off = (statistics.median(rates[p]) for p in (True, False))
            print(f"{str(dtype).split('.')[1]} batch {n} {kind}: packed {on:.1f} tok/s, unpacked {off:.1f} tok/s, "
                  f"packed/unpacked {on / off:.2f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        engine_ab([int(v) for v in sys.argv[2].split(",")], getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "float32"))
    else:
        main(tuple(int(v) for v in sys.argv[1].split(",")) if len(sys.argv) > 1 else (1, 8, 32))
