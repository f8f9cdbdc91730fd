"""Does the engine decode as fast on a background thread (where the server runs it) as on the main thread?

    python -m paratune.bench.thread_check [--threads 2] [--loras 4]

One request (64 random prompt tokens, 32 new tokens) through ``Engine.generate``, base and LoRA, first on the
main thread, then on a new thread. Measured 2026-12-01 (2 threads): main 1.14 s base / 1.33 s LoRA, other
thread 1.86 s / 3.2 s; with --threads 1 both ~1.9 s / 2.1 s: intra-op parallelism is lost off the main thread.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch

from ..engine import Engine, Request, SamplingParams
from ..models import load_backbone
from .profile_step import write_adapters


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loras", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backbone = load_backbone()
    engine = Engine(backbone.model, backbone.tokenizer, max_batch=64, max_seq_len=3072)
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(write_adapters("lora", args.loras, Path(tmp))):
            engine.add_adapter(f"lora{i}", path)
    generator = torch.Generator().manual_seed(0)

    def run(kind: str, where: str) -> None:
        ids = torch.randint(100, 40000, (64,), generator=generator).tolist()
        request = Request(ids, adapter=None if kind == "base" else "lora0",
                          params=SamplingParams(max_tokens=32, ignore_eos=True))
        start = time.perf_counter()
        engine.generate([request])
        print(f"{where:>14} {kind}: {time.perf_counter() - start:.3f} s")

    for kind in ("base", "lora", "base", "lora"):
        run(kind, "main thread")
    worker = threading.Thread(target=lambda: [run(k, "other thread") for k in ("base", "lora", "base", "lora")])
    worker.start()
    worker.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
