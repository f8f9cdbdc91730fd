"""Request and adapter lifecycles on a live server whose engine steps are slowed down (so requests are reliably
in flight): client disconnects free their slots, hot unload/load loses no request, a full queue answers 429,
and the Prometheus metrics are labelled per adapter."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest

from paratune.engine import Engine
from tests.server.conftest import API_KEY, MODEL_NAME, serve_tenants, tiny_backbone
from tests.server.test_openai_client import offline

STEP_SECONDS = 0.03
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class SlowEngine(Engine):
    queue_depths: list[int] = []

    def step(self):
        time.sleep(STEP_SECONDS)
        self.queue_depths.append(len(self.waiting) - (self.max_batch - len(self.running)))  # beyond free slots
        return super().step()


@pytest.fixture(scope="module")
def slow(tmp_path_factory, chat_tokenizer):
    engine = SlowEngine(tiny_backbone(chat_tokenizer), chat_tokenizer, max_batch=4)
    yield from serve_tenants(tmp_path_factory, chat_tokenizer, engine, queue_size=6, max_completion_tokens=200)


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(url + "/metrics").text
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{name}" + (rf"\{{{selector}\}}" if labels else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def idle(slow) -> bool:
    return metric(slow.url, "paratune_running_requests") == 0 and metric(slow.url, "paratune_queue_depth") == 0


def test_disconnect_mid_stream_cancels_the_request_and_frees_its_slot(slow):
    assert wait_until(lambda: idle(slow))
    body = {"model": "para0", "prompt": "Tell a long story", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.Client(base_url=slow.url, headers=AUTH, timeout=30) as client:
        with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            events = (line for line in response.iter_lines() if line.startswith("data:"))
            assert all(next(events) for _ in range(2))  # two tokens streamed, then the client goes away
            assert metric(slow.url, "paratune_running_requests") == 1
    # 200 tokens would take >= 6 s at this step time; the slot is freed long before.
    start = time.monotonic()
    assert wait_until(lambda: idle(slow), timeout=3)
    assert time.monotonic() - start < 3
    assert wait_until(lambda: metric(slow.url, "paratune_requests_total", adapter="para0", endpoint="completions",
                                     status="499") == 1)
    assert metric(slow.url, "paratune_completion_tokens_total", adapter="para0") < 200


def test_disconnect_while_waiting_for_a_plain_completion_frees_the_slot(slow):
    assert wait_until(lambda: idle(slow))
    body = {"model": "lora0", "prompt": "Tell a long story", "max_tokens": 200, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(slow.url + "/v1/completions", json=body, headers=AUTH, timeout=0.5)
    assert wait_until(lambda: idle(slow), timeout=3)
    assert wait_until(lambda: metric(slow.url, "paratune_requests_total", adapter="lora0", endpoint="completions",
                                     status="499") == 1)


def test_hot_unload_and_reload_while_requests_run_loses_none(slow, chat_tokenizer):
    messages = [{"role": "user", "content": "Hello there"}]
    expected = offline(slow, chat_tokenizer, messages=messages, adapter="para1", max_tokens=24).text

    async def run():
        async with httpx.AsyncClient(base_url=slow.url, headers=AUTH, timeout=60) as client:
            body = {"model": "para1", "messages": messages, "max_tokens": 24, "temperature": 0}
            in_flight = [asyncio.create_task(client.post("/v1/chat/completions", json=body)) for _ in range(6)]
            # Loading another adapter while they run disturbs nothing.
            loaded = await client.post("/v1/adapters", json={"name": "extra", "path": "lora0"})
            while (await client.get("/health")).json()["running"] < 4:  # all batch slots taken, 2 requests wait
                await asyncio.sleep(0.005)
            unload = asyncio.create_task(client.delete("/v1/adapters/para1"))
            while "para1" in [m["id"] for m in (await client.get("/v1/models")).json()["data"]]:
                await asyncio.sleep(0.005)  # until the unload has begun (draining adapters are not listed)
            refused = await client.post("/v1/chat/completions", json=body)  # draining: no new requests
            answers = await asyncio.gather(*in_flight)
            unloaded = await unload
            after = await client.post("/v1/chat/completions", json=body)
            reloaded = await client.post("/v1/adapters", json={"name": "para1", "path": "para1"})
            again = await client.post("/v1/chat/completions", json=body)
            removed_extra = await client.delete("/v1/adapters/extra")
            return loaded, refused, answers, unloaded, after, reloaded, again, removed_extra

    loaded, refused, answers, unloaded, after, reloaded, again, removed_extra = asyncio.run(run())
    assert loaded.status_code == 200 and loaded.json()["type"] == "LORA"
    assert [a.status_code for a in answers] == [200] * 6
    assert all(a.json()["choices"][0]["message"]["content"] == expected for a in answers)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert unloaded.status_code == 200 and unloaded.json()["deleted"] is True
    assert after.status_code == 404
    assert reloaded.status_code == 200
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == expected
    assert removed_extra.status_code == 200
    assert "extra" not in slow.engine.adapters()


def test_full_queue_answers_429_and_every_admitted_request_finishes(slow):
    assert wait_until(lambda: idle(slow))
    slow.engine.queue_depths = []

    async def run():
        async with httpx.AsyncClient(base_url=slow.url, headers=AUTH, timeout=60) as client:
            body = {"model": MODEL_NAME, "prompt": "Count:", "max_tokens": 12, "temperature": 0}
            tasks = []
            for _ in range(24):  # 4 run, 6 wait, the rest find the queue full
                tasks.append(asyncio.create_task(client.post("/v1/completions", json=body)))
                await asyncio.sleep(0.005)
            return await asyncio.gather(*tasks)

    responses = asyncio.run(run())
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 429}, codes
    assert codes.count(200) >= 10  # 4 running + 6 queued at least
    # The queue never held more than its 6 places (requests leaving free places, so more than 10 may pass).
    assert max(slow.engine.queue_depths) <= 6
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert all(e["type"] == "rate_limit_error" and "queue is full" in e["message"] for e in refused)
    assert all(r.json()["usage"]["completion_tokens"] == 12 for r in responses if r.status_code == 200)
    assert wait_until(lambda: idle(slow))


def test_metrics_are_labelled_per_adapter(slow):
    with httpx.Client(base_url=slow.url, headers=AUTH, timeout=30) as client:
        for model in ("ia3", MODEL_NAME):
            assert client.post("/v1/completions", json={"model": model, "prompt": "Hi", "max_tokens": 3,
                                                        "temperature": 0}).status_code == 200
    assert metric(slow.url, "paratune_requests_total", adapter="ia3", endpoint="completions", status="200") == 1
    assert metric(slow.url, "paratune_completion_tokens_total", adapter="ia3") == 3
    assert metric(slow.url, "paratune_request_latency_seconds_count", adapter="ia3") == 1
    assert metric(slow.url, "paratune_active_adapters") == len(slow.tenants)
    assert metric(slow.url, "paratune_requests_total", adapter=MODEL_NAME, endpoint="completions",
                  status="200") >= 11
