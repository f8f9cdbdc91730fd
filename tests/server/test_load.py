"""Load: 64 concurrent clients x 20 requests over the base model and four adapters; every request is answered with
exactly the engine's offline greedy output."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import httpx

from paratune.engine import Engine, Request, SamplingParams
from tests.server.conftest import API_KEY, MODEL_NAME, tiny_backbone

CLIENTS, REQUESTS_PER_CLIENT, MAX_TOKENS = 64, 20, 8
PROMPTS = ["The weather today", "Once upon a time", "Numbers: 1 2 3", "Dear customer,", "In the beginning"]


def expected_outputs(live, tokenizer, models: list[str]) -> dict[tuple[str, str], str]:
    engine = Engine(tiny_backbone(tokenizer), tokenizer)
    for name, path in live.tenants.items():
        engine.add_adapter(name, path)
    keys = list(itertools.product(models, PROMPTS))
    requests = [Request(tokenizer(prompt)["input_ids"], None if model == MODEL_NAME else model,
                        SamplingParams(max_tokens=MAX_TOKENS)) for model, prompt in keys]
    return {key: request.text for key, request in zip(keys, engine.generate(requests))}


async def one_client(client: httpx.AsyncClient, index: int, models: list[str]) -> list[tuple]:
    results = []
    for j in range(REQUESTS_PER_CLIENT):
        model, prompt = models[(index + j) % len(models)], PROMPTS[(index * 7 + j) % len(PROMPTS)]
        start = time.perf_counter()
        response = await client.post("/v1/completions", json={"model": model, "prompt": prompt, "temperature": 0,
                                                             "max_tokens": MAX_TOKENS})
        results.append((model, prompt, response.status_code, response.json(), time.perf_counter() - start))
    return results


def test_64_clients_x_20_requests_all_answered_with_the_offline_outputs(live, chat_tokenizer):
    models = [MODEL_NAME, *sorted(live.tenants)]
    assert len(models) >= 5
    expected = expected_outputs(live, chat_tokenizer, models)

    async def run():
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                     timeout=300, limits=limits) as client:
            return await asyncio.gather(*(one_client(client, i, models) for i in range(CLIENTS)))

    start = time.perf_counter()
    results = [r for client_results in asyncio.run(run()) for r in client_results]
    wall = time.perf_counter() - start
    assert len(results) == CLIENTS * REQUESTS_PER_CLIENT
    failures = [(m, p, s, b) for m, p, s, b, _ in results if s != 200]
    assert not failures, failures[:3]
    wrong = [(m, p, b["choices"][0]["text"], expected[m, p]) for m, p, _, b, _ in results
             if b["choices"][0]["text"] != expected[m, p]]
    assert not wrong, wrong[:3]
    assert {m for m, *_ in results} == set(models)
    latencies = sorted(r[-1] for r in results)
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    tokens = sum(b["usage"]["completion_tokens"] for _, _, _, b, _ in results)
    print(f"\nload: {len(results)} requests from {CLIENTS} concurrent clients over {len(models)} models in "
          f"{wall:.1f} s ({len(results) / wall:.1f} req/s, {tokens / wall:.0f} tok/s); "
          f"latency p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms, max {1000 * latencies[-1]:.0f} ms")
    assert not live.engine.running and not live.engine.waiting
