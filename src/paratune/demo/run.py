"""`paratune demo`: three tenants on one backbone, served over the OpenAI API.

1. Train one PARA adapter per generated task on the backbone (a minute or so each on a 2-core CPU; cached
   after the first run, keyed by model, task and training settings).
2. Start the OpenAI-compatible server with the three tenants on one engine.
3. Send every tenant's held-out prompts, and the same prompts to the base model, concurrently through the
   official ``openai`` client; print the answers side by side, accuracy and throughput; shut down.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import peft
import torch

from ..models import DEFAULT_MODEL, cache_dir, load_backbone
from ..para.generator import GENERATOR_VERSION
from ..para import ParaConfig
from ..training.data import build_dataset
from ..training.loop import train_steps
from .tasks import TASKS, answer_matches


def train_tenant(model_name: str, task: str, steps: int, r: int, lr: float, batch_size: int, seed: int,
                 max_seconds: float | None) -> Path:
    """Train (or reuse from the cache) one tenant's PARA adapter; returns its folder. An adapter cut short by
    ``max_seconds`` is used for this run but not cached (its folder name promises ``steps`` steps)."""
    slug = model_name.replace("/", "_")
    folder = cache_dir() / "demo" / (f"{slug}-{task}-r{r}-steps{steps}-lr{lr}-bs{batch_size}-seed{seed}"
                                      f"-gen{GENERATOR_VERSION}")
    if (folder / "adapter_model.safetensors").is_file():
        print(f"tenant {task!r}: cached adapter {folder}")
        return folder
    backbone = load_backbone(model_name)
    torch.manual_seed(seed)
    records = TASKS[task].records(batch_size * steps, seed, False)
    dataset, _ = build_dataset(backbone.tokenizer, records, "prompt-completion", max_length=128)
    model = peft.get_peft_model(backbone.model, ParaConfig(r=r))
    losses = train_steps(model, dataset, backbone.tokenizer, steps=steps, lr=lr, batch_size=batch_size, seed=seed,
                         max_seconds=max_seconds, desc=f"training tenant {task!r}")
    print(f"tenant {task!r}: loss {losses[0]:.3f} -> {sum(losses[-5:]) / len(losses[-5:]):.3f} "
          f"in {len(losses)} steps")
    if len(losses) < steps:
        print(f"tenant {task!r}: stopped by --max-seconds after {len(losses)} of {steps} steps; not cached")
        short = Path(tempfile.mkdtemp(prefix=f"paratune-demo-{task}-"))
        model.save_pretrained(short)
        return short
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.save_pretrained(tmp)
    os.replace(tmp, folder)  # atomic: a half-written adapter never looks cached
    return folder


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _ask_all(url: str, model_name: str, questions: dict[str, list[dict]], max_tokens: int):
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="demo", max_retries=0)

    async def ask(model: str, prompt: str) -> tuple[str, int]:
        reply = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                     max_tokens=max_tokens, temperature=0)
        return reply.choices[0].message.content.strip(), reply.usage.completion_tokens

    jobs = [(task, q, target) for task, qs in questions.items() for q in qs for target in (task, model_name)]
    start = time.perf_counter()
    answers = await asyncio.gather(*(ask(target, q["prompt"]) for task, q, target in jobs))
    wall = time.perf_counter() - start
    await client.close()
    return jobs, answers, wall


def run_demo(model_name: str = DEFAULT_MODEL, steps: int = 30, r: int = 16, lr: float = 3e-3, batch_size: int = 8,
             max_seconds: float | None = None, n_eval: int = 8, max_tokens: int = 16, seed: int = 0) -> dict:
    import uvicorn

    from ..engine import Engine
    from ..server.app import ServerConfig, create_app

    start = time.perf_counter()
    tenants = {task: train_tenant(model_name, task, steps, r, lr, batch_size, seed, max_seconds) for task in TASKS}
    backbone = load_backbone(model_name)
    engine = Engine(backbone.model, backbone.tokenizer, max_batch=64)
    for name, path in tenants.items():
        engine.add_adapter(name, path)
    app = create_app(engine, ServerConfig(model_name=model_name))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    print(f"\nserver up on http://127.0.0.1:{port}/v1 with tenants {list(tenants)} + base {model_name!r}")
    questions = {task: TASKS[task].records(n_eval, seed + 1, True) for task in TASKS}
    try:
        jobs, answers, wall = asyncio.run(_ask_all(f"http://127.0.0.1:{port}/v1", model_name, questions,
                                                   max_tokens))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    print("server shut down cleanly" if not thread.is_alive() else "server did not stop in 30 s")
    by = {(task, q["prompt"], target): answer for (task, q, target), answer in zip(jobs, answers)}
    summary = {}
    for task, qs in questions.items():
        print(f"\n== tenant {task!r} ({TASKS[task].description}) ==")
        print(f"{'prompt':<46} | {'gold':<9} | {'base model':<34} | tenant")
        hits = {"base": 0, "tenant": 0}
        for q in qs:
            base, tenant = by[(task, q["prompt"], model_name)][0], by[(task, q["prompt"], task)][0]
            hits["base"] += answer_matches(base, q["completion"])
            hits["tenant"] += answer_matches(tenant, q["completion"])
            print(f"{textwrap.shorten(q['prompt'].split(chr(10))[-1], 46):<46} | {q['completion']:<9} | "
                  f"{textwrap.shorten(base, 34):<34} | {textwrap.shorten(tenant, 30)}")
        summary[task] = {k: v / len(qs) for k, v in hits.items()}
        print(f"held-out accuracy: base {summary[task]['base']:.0%}, tenant {summary[task]['tenant']:.0%}")
    tokens = sum(n for _, n in answers)
    print(f"\n{len(answers)} concurrent requests ({len(TASKS)} tenants + base, mixed in one batch): {tokens} tokens "
          f"in {wall:.1f}s = {tokens / wall:.1f} tokens/s, {len(answers) / wall:.1f} requests/s")
    print(f"demo finished in {time.perf_counter() - start:.0f}s")
    return {"accuracy": summary, "tokens_per_second": tokens / wall}
