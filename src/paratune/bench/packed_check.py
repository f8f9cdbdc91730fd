"""F.linear vs oneDNN-prepacked weights (engine/packed_weights.py).

    python -m paratune.bench.packed_check                        # kernels: SmolLM2-135M's matrix shapes at 1, 8,
                                                                 # 32 rows, fp32 and bf16, microseconds per call
    python -m paratune.bench.packed_check stream                 # SmolLM2-135M's real weights, all 30 layers in
                                                                 # decode order (weights streamed from memory, as
                                                                 # in a decode step): ms per pass, F.linear vs
                                                                 # packed vs packed with q|k|v, gate|up fused
    python -m paratune.bench.packed_check engine 1,8,32 bfloat16 # decode steps of the engine, packed vs unpacked
                                                                 # (two engines, interleaved rounds, base and PARA)

The kernel table calls one matrix again and again from cache; a decode step reads every matrix once, from
memory. Only the stream table and the engine A/B say what a decode step gets.
"""
import sys
import time

import torch
import torch.nn.functional as F

from paratune.engine.packed_weights import _HINT

torch.set_num_threads(2)
# (in, out): q/o, k/v, gate/up, down, head, and the fused q|k|v and gate|up of the decode step
SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152), (576, 960), (576, 3072)]


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


def stream(rows=(1, 8, 32), reps: int = 20) -> None:
    from paratune.engine.fast_decode import GROUPS, PROJECTIONS
    from paratune.engine.packed_weights import PackedWeights
    from paratune.models import load_backbone

    print("| dtype | rows | F.linear ms | packed ms | packed, fused ms | packed / F.linear | fused / F.linear |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        layers = load_backbone().model.to(dtype).model.layers
        separate = [[layer.get_submodule(name) for name in PROJECTIONS] for layer in layers]
        members = {m for group in GROUPS.values() for m in group}
        fused = [[layer.get_submodule(n) for n in PROJECTIONS if n not in members] for layer in layers]
        ways = {
            "plain": (PackedWeights({}), [[(None, m) for m in layer] for layer in separate]),
            "packed": (PackedWeights({(i, j): (m.weight, m.bias) for i, layer in enumerate(separate)
                                      for j, m in enumerate(layer)}),
                       [[((i, j), m) for j, m in enumerate(layer)] for i, layer in enumerate(separate)]),
        }
        groups = {(i, g): [layer.get_submodule(m) for m in ms] for i, layer in enumerate(layers) for g, ms in GROUPS.items()}
        fused_packed = PackedWeights.build({(i, n): m for i, layer in enumerate(fused) for n, m in
                                            enumerate(layer)}, None, "all", groups)
        calls = [[((i, n), m) for n, m in enumerate(layer)] + [((i, g), groups[(i, g)][0]) for g in GROUPS]
                 for i, layer in enumerate(fused)]
        ways["fused"] = (fused_packed, calls)
        for m in rows:
            inputs = {k: torch.randn(m, 1, k).to(dtype) for k in (576, 1536)}
            result = {}
            for way, (packed, plan) in ways.items():
                def one_pass():
                    for layer in plan:
                        for key, module in layer:
                            packed.linear(key, module, inputs[module.in_features])
                one_pass()
                times = []
                for _ in range(reps):
                    start = time.perf_counter()
                    one_pass()
                    times.append(time.perf_counter() - start)
                result[way] = sorted(times)[reps // 2] * 1e3
            print(f"| {str(dtype).split('.')[1]} | {m} | {result['plain']:.1f} | {result['packed']:.1f} | "
                  f"{result['fused']:.1f} | {result['packed'] / result['plain']:.2f} | "
                  f"{result['fused'] / result['plain']:.2f} |", flush=True)


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
    if len(sys.argv) > 1 and sys.argv[1] == "stream":
        stream()
    elif len(sys.argv) > 1 and sys.argv[1] == "engine":
        engine_ab([int(v) for v in sys.argv[2].split(",")], getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "float32"))
    else:
        main(tuple(int(v) for v in sys.argv[1].split(",")) if len(sys.argv) > 1 else (1, 8, 32))
