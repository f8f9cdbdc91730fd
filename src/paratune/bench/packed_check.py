"""F.linear vs oneDNN-prepacked weights (engine/packed_weights.py) at decode batch sizes, SmolLM2-135M's matrix
shapes, fp32 and bf16, microseconds per call (random weights, cache-warm: the matmul kernels alone).

    python -m paratune.bench.packed_check            # 1,8,32 rows
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


if __name__ == "__main__":
    main(tuple(int(v) for v in sys.argv[1].split(",")) if len(sys.argv) > 1 else (1, 8, 32))
