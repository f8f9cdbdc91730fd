"""Where a decode step's time goes: torch.profiler over decode steps of the engine, base / PARA / LoRA rows.

    python -m paratune.bench.profile_step --batch 32 --steps 5 --output docs/results/serve/profile.md

Every row runs on its own random-weight adapter (PARA r=16 or LoRA r=16 on q, v, up) of the real SmolLM2-135M;
the table lists the top operators by self CPU time per decode step, and the step's wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import peft
import torch

from ..engine import Engine, Request, SamplingParams
from ..models import load_backbone
from ..para import ParaConfig


def write_adapters(kind: str, n: int, root: Path) -> list[Path]:
    """n random-weight adapters of one kind for the default backbone (one wrapper, re-randomised per save)."""
    config = ParaConfig(r=16) if kind == "para" else peft.LoraConfig(
        r=16, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(load_backbone().model, config)
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in wrapped.named_parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
        paths.append(root / f"{kind}{i}")
        wrapped.save_pretrained(paths[-1])
    return paths


def decode_seconds_per_step(engine: Engine, adapters: list[str | None], steps: int, generator: torch.Generator,
                            prompt_len: int = 64) -> float:
    """One round: a request per entry of ``adapters`` (random prompts), prefill and one decode step untimed,
    then the mean wall time of ``steps`` decode steps; the round is drained before returning."""
    for adapter in adapters:
        engine.add_request(Request(torch.randint(100, 40000, (prompt_len,), generator=generator).tolist(),
                                   adapter=adapter, params=SamplingParams(max_tokens=steps + 4, ignore_eos=True)))
    engine.step()
    engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    seconds = (time.perf_counter() - start) / steps
    while engine.has_work():
        engine.step()
    return seconds


def prefill_seconds(engine: Engine, prompts: list[list[int]], adapters: list[str | None]) -> float:
    """Wall time of the one engine step that prefills a request per prompt (``adapters[i]`` on prompt i), each
    asking for one token; the round is drained before returning."""
    for ids, adapter in zip(prompts, adapters, strict=True):
        engine.add_request(Request(ids, adapter=adapter, params=SamplingParams(max_tokens=1, ignore_eos=True)))
    start = time.perf_counter()
    engine.step()
    seconds = time.perf_counter() - start
    while engine.has_work():
        engine.step()
    return seconds


def profile(kind: str, batch: int, steps: int, prompt_len: int = 64) -> tuple[float, str]:
    backbone = load_backbone()
    model = backbone.model
    engine = Engine(model, backbone.tokenizer, max_batch=batch, max_seq_len=prompt_len + 16 + steps * 2)
    adapters: list[str | None] = [None] * batch
    if kind != "base":
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_adapters(kind, batch, Path(tmp))
            for i, path in enumerate(paths):
                engine.add_adapter(f"t{i}", path)
        adapters = [f"t{i}" for i in range(batch)]
    g = torch.Generator().manual_seed(0)
    for adapter in adapters:
        ids = torch.randint(100, 40000, (prompt_len,), generator=g).tolist()
        engine.add_request(Request(ids, adapter=adapter, params=SamplingParams(max_tokens=8 + 2 * steps,
                                                                                ignore_eos=True)))
    engine.step()  # prefill (all rows join at once)
    for _ in range(3):
        engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    wall = (time.perf_counter() - start) / steps
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            engine.step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)
    return wall, table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--kinds", default="base,para,lora")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = [f"# One decode step, {args.batch} rows, SmolLM2-135M fp32, {args.threads} threads\n",
             f"`python -m paratune.bench.profile_step --batch {args.batch} --steps {args.steps} "
             f"--kinds {args.kinds}` (torch {torch.__version__})\n"]
    for kind in args.kinds.split(","):
        wall, table = profile(kind, args.batch, args.steps)
        parts.append(f"## {kind}: {wall * 1000:.1f} ms per decode step ({args.batch / wall:.0f} tok/s)\n\n"
                     f"Self CPU time over {args.steps} steps:\n\n```\n{table}\n```\n")
        print(parts[-1])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
