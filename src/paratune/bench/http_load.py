"""One HTTP load generator for every OpenAI-compatible server the serving benchmark compares.

Two arrival patterns over a fixed list of request bodies (each body names its own adapter, in whatever way
the server under test wants it):

- **closed loop**: ``concurrency`` clients; client ``k`` sends bodies ``k, k + c, k + 2c, ...`` one after
  another, each as soon as its previous response arrived (so client ``k`` always uses the same adapter when
  bodies are laid out that way);
- **Poisson**: open loop, body ``i`` is sent at the ``i``-th arrival of a Poisson process of rate ``rate``
  (exponential gaps, seeded), whether or not earlier requests have finished.

Tokens are counted from each response's ``usage`` (with ``stream``, from the final chunk's ``usage`` when
the server sends one, else one token per non-empty chunk; TTFT is the first non-empty chunk). Throughput is
completion tokens / wall time of the run (first send to last response).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

import httpx


@dataclass
class RequestRecord:
    index: int
    client: int
    start: float  # seconds since the run began
    end: float = 0.0
    first_token: float | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    counted_from_chunks: bool = False  # streamed without a final `usage`: one token per non-empty chunk

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


@dataclass
class RunResult:
    mode: str  # "closed" or "poisson"
    concurrency: int | None
    rate: float | None
    wall_s: float
    records: list[RequestRecord] = field(default_factory=list)
    max_in_flight: int = 0

    @property
    def ok(self) -> list[RequestRecord]:
        return [r for r in self.records if r.status == 200 and r.error is None]

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.ok)

    @property
    def tok_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self, expected_tokens: int | None = None) -> dict:
        ok = self.ok
        lat = sorted(r.latency for r in ok)
        ttft = sorted(r.ttft for r in ok if r.ttft is not None)
        out = {"mode": self.mode, "concurrency": self.concurrency, "rate": self.rate, "requests": len(self.records),
               "errors": len(self.records) - len(ok), "completion_tokens": self.completion_tokens,
               "prompt_tokens_mean": statistics.mean(r.prompt_tokens for r in ok) if ok else 0,
               "wall_s": self.wall_s, "tok_s": self.tok_s, "req_s": len(ok) / self.wall_s if self.wall_s else 0.0,
               "latency_p50_s": percentile(lat, 50), "latency_p99_s": percentile(lat, 99),
               "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
               "max_in_flight": self.max_in_flight}
        chunk_counted = sum(1 for r in ok if r.counted_from_chunks)
        if chunk_counted:
            out["tokens_counted_from_chunks"] = chunk_counted
        if expected_tokens is not None:  # a server that ignores ignore_eos may stop some requests early
            out["short_requests"] = sum(1 for r in ok if r.completion_tokens < expected_tokens)
        first_errors = [r.error or f"HTTP {r.status}" for r in self.records if r not in ok][:3]
        if first_errors:
            out["first_errors"] = first_errors
        return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """Send times (seconds from the start) of ``n`` arrivals of a Poisson process of ``rate`` per second;
    the first arrival is at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    rng = random.Random(seed)
    times, t = [], 0.0
    for i in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


class _Runner:
    def __init__(self, url: str, headers: dict | None, stream: bool, timeout: float, connections: int):
        self.url = url.rstrip("/") + "/v1/completions"
        self.headers = headers or {}
        self.stream = stream
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections))
        self.in_flight = 0
        self.max_in_flight = 0
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def send(self, index: int, client: int, body: dict) -> RequestRecord:
        record = RequestRecord(index=index, client=client, start=self.now())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.stream:
                await self._stream(record, body)
            else:
                response = await self.client.post(self.url, json=body, headers=self.headers)
                record.status = response.status_code
                data = response.json()
                if response.status_code != 200:
                    record.error = json.dumps(data)[:300]
                else:
                    usage = data.get("usage") or {}
                    record.prompt_tokens = int(usage.get("prompt_tokens", 0))
                    record.completion_tokens = int(usage.get("completion_tokens", 0))
                    record.finish_reason = (data.get("choices") or [{}])[0].get("finish_reason")
        except Exception as error:  # a failed request is counted, never fatal to the run
            record.error = f"{type(error).__name__}: {error}"[:300]
        finally:
            record.end = self.now()
            self.in_flight -= 1
        return record

    async def _stream(self, record: RequestRecord, body: dict) -> None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        chunks = 0
        async with self.client.stream("POST", self.url, json=body, headers=self.headers) as response:
            record.status = response.status_code
            if response.status_code != 200:
                record.error = (await response.aread()).decode(errors="replace")[:300]
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                data = json.loads(payload)
                if "error" in data:
                    record.error = json.dumps(data)[:300]
                    return
                choice = (data.get("choices") or [{}])[0]
                if choice.get("text") or (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if record.first_token is None:
                        record.first_token = self.now()
                if choice.get("finish_reason"):
                    record.finish_reason = choice["finish_reason"]
                usage = data.get("usage")
                if usage:
                    record.prompt_tokens = int(usage.get("prompt_tokens", 0))
                    record.completion_tokens = int(usage.get("completion_tokens", 0))
        if not record.completion_tokens:
            record.completion_tokens = chunks
            record.counted_from_chunks = True


async def closed_loop(url: str, bodies: list[dict], concurrency: int, *, headers: dict | None = None,
                      stream: bool = False, timeout: float = 600.0) -> RunResult:
    """``concurrency`` clients, each sending its share of ``bodies`` back to back (client k: k, k+c, ...)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    runner = _Runner(url, headers, stream, timeout, concurrency)

    async def client(k: int) -> list[RequestRecord]:
        return [await runner.send(i, k, bodies[i]) for i in range(k, len(bodies), concurrency)]

    async with runner.client:
        runner.t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client(k) for k in range(min(concurrency, len(bodies)))))
        wall = runner.now()
    records = sorted((r for rs in per_client for r in rs), key=lambda r: r.index)
    return RunResult("closed", concurrency, None, wall, records, runner.max_in_flight)


async def poisson_load(url: str, bodies: list[dict], rate: float, *, seed: int = 0, headers: dict | None = None,
                       stream: bool = False, timeout: float = 600.0) -> RunResult:
    """Open loop: body i sent at the i-th arrival of a Poisson process of ``rate`` requests per second."""
    arrivals = poisson_arrivals(len(bodies), rate, seed)
    runner = _Runner(url, headers, stream, timeout, max(1, len(bodies)))

    async def one(i: int) -> RequestRecord:
        delay = arrivals[i] - runner.now()
        if delay > 0:
            await asyncio.sleep(delay)
        return await runner.send(i, i, bodies[i])

    async with runner.client:
        runner.t0 = time.perf_counter()
        records = await asyncio.gather(*(one(i) for i in range(len(bodies))))
        wall = runner.now()
    return RunResult("poisson", None, rate, wall, list(records), runner.max_in_flight)


def run_closed(url: str, bodies: list[dict], concurrency: int, **kw) -> RunResult:
    return asyncio.run(closed_loop(url, bodies, concurrency, **kw))


def run_poisson(url: str, bodies: list[dict], rate: float, **kw) -> RunResult:
    return asyncio.run(poisson_load(url, bodies, rate, **kw))


def records_as_dicts(result: RunResult) -> list[dict]:
    return [asdict(r) for r in result.records]
