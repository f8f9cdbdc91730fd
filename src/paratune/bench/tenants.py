"""`paratune bench tenants`: serving throughput and latency as the number of distinct tenants grows into thousands.

Workload, at each N of ``--tenants``: N random-weight adapters of one kind (``bench.adapters``; PARA or LoRA on
q, v, up, rank ``--rank``, ``--reduced-rank`` from ``--reduced-rank-from`` tenants on to bound disk), loaded by
the server on first use. ``--requests`` requests arrive as a Poisson process of ``--rate``; request i names tenant
t_i, drawn from a Zipf(``--alpha``) popularity over the N tenants (a few tenants take most requests, a long tail
is seen once or never: the power law S-LoRA serves). Each request is a ``--prompt-len``-token prompt, greedy, EOS
ignored, ``--new-tokens`` tokens, streamed (for the time to first token). Arrival times and prompts are the same
at every N and the tenant sequence at an N is the same for every system, so only the tenants differ between
cells. ``base`` (no adapter) is the reference, run once per repeat (recorded as N=0).

Systems: ``paratune`` (``paratune serve --max-active-adapters K --adapter-cache-bytes B``: base, PARA, LoRA) and
``vllm-cpu`` (vLLM's CPU backend, its filesystem LoRA resolver loading an adapter on its first request,
``--max-loras`` 32, ``--max-cpu-loras`` K: base and LoRA; ``bench.vllm_cpu``). A fresh server per cell, so every
cell starts with a cold adapter cache. Within a repeat the systems alternate at each N.

Per cell: output tokens/s over the run, TTFT p50/p99 of warm and cold requests apart (paratune answers with the
header ``paratune-adapter-cache: hit|miss``; for vLLM, and for paratune if the header is missing, a tenant's first
request in the trace is the cold one), adapter load latency p50/p99 and the cache hit rate (from paratune's
/metrics, read before and after the trace), start-up time (process start until /health answers), peak RSS of the
server (VmHWM, the whole process tree for vLLM) and paratune's printed memory budget. The report is
``tenants_report``; tenants.json is rewritten after every cell, and the same command resumes a stopped run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from ..validation import check, is_int, is_number
from .serve_bench import _help

SYSTEMS = ("paratune", "vllm-cpu")
KINDS = ("base", "para", "lora")
SYSTEM_KINDS = {"paratune": ("base", "para", "lora"), "vllm-cpu": ("base", "lora")}  # vLLM has no PARA
CACHE_HEADER = "paratune-adapter-cache"  # `hit` or `miss` (the request waited for its adapter to be loaded)


@dataclass
class TenantsConfig:
    """``paratune bench tenants``: every field is a flag (``--max-active-adapters`` is ``max_active_adapters``)."""

    systems: list[str] = field(default_factory=lambda: list(SYSTEMS), metadata=_help(
        "paratune (our server) and vllm-cpu (vLLM's CPU backend in a venv of its own, set up on first use; "
        "leave it out with --systems paratune)"))
    kinds: list[str] = field(default_factory=lambda: list(KINDS), metadata=_help(
        "base (no adapter, run once per repeat as the reference), para, lora (vllm-cpu: base and lora only)"))
    tenants: list[int] = field(default_factory=lambda: [1, 100, 1000, 2000, 10000], metadata=_help(
        "numbers of distinct tenants (adapters) N; disk for the adapter files, fp32 SmolLM2: PARA 5.3 MiB and "
        "LoRA 7.4 MiB each at r=16, 1.4 and 1.8 MiB at r=4 (the defaults need about 57 GiB, written once and "
        "cached; a set of N hard-links the adapters a cached set of another N already has)"))
    requests: int = field(default=240, metadata=_help(
        "requests per cell: at N=2000 a Zipf(1) trace of 240 requests names about 135 distinct tenants"))
    rate: Optional[float] = field(default=None, metadata=_help(
        "Poisson arrival rate in requests/s, the same for every system and N. Default: --rate-fraction x the "
        "capacity of `paratune serve` on the base model, measured at the start as the request rate of "
        "--max-concurrent closed-loop clients (recorded, and reused when resuming). To set it yourself, take "
        "0.7-0.9 x the req/s of `paratune bench serve --systems paratune --kinds base --modes closed "
        "--concurrency 32`: above capacity the queue grows for the whole run and TTFT measures the queue; far "
        "below it every system keeps up and the cells look alike"))
    rate_fraction: float = field(default=0.8, metadata=_help(
        "fraction of the measured capacity used as the rate when --rate is not given (headroom for adapter "
        "loads and noise)"))
    alpha: float = field(default=1.0, metadata=_help("Zipf exponent of tenant popularity (P(rank k) ~ 1/k^alpha)"))
    prompt_len: int = field(default=64, metadata=_help("prompt tokens per request"))
    new_tokens: int = field(default=32, metadata=_help("tokens generated per request (greedy, EOS ignored)"))
    max_concurrent: int = field(default=32, metadata=_help(
        "requests decoded together (paratune --max-concurrent, vLLM --max-num-seqs)"))
    max_active_adapters: int = field(default=32, metadata=_help(
        "adapters in the device slot tables at once: paratune --max-active-adapters and vLLM --max-loras (the "
        "distinct adapters of one batch; = --max-concurrent, so no request waits for a slot). A PARA adapter "
        "needs its slot only while its prompts prefill, a LoRA adapter until its requests finish"))
    adapter_cache_bytes: int = field(default=2**30, metadata=_help(
        "paratune --adapter-cache-bytes, the host cache of loaded adapters: 1 GiB holds about 139 LoRA or 192 "
        "PARA r=16 adapters of SmolLM2 in fp32, close to the --vllm-max-cpu-loras vLLM keeps"))
    vllm_max_cpu_loras: int = field(default=128, metadata=_help(
        "vLLM --max-cpu-loras (LoRA adapters vLLM keeps loaded in host memory, LRU), the counterpart of "
        "--adapter-cache-bytes. 128 holds every tenant a 240-request trace names at N=100 (about 66) and fewer "
        "than it names from N=1000 on (120-160), so the large N also measure eviction and reloading"))
    rank: int = field(default=16, metadata=_help("adapter rank (PARA bottleneck r, LoRA r) below --reduced-rank-from"))
    reduced_rank: int = field(default=4, metadata=_help(
        "adapter rank from --reduced-rank-from tenants on: r=16 for 10,000 tenants would be about 124 GiB of "
        "files (PARA and LoRA), r=4 is 31 GiB"))
    reduced_rank_from: int = field(default=5000, metadata=_help("N from which adapters have --reduced-rank"))
    repeats: int = field(default=3, metadata=_help("repeats; the systems alternate within each"))
    seed: int = field(default=0, metadata=_help("seed of the trace (tenants, arrivals, prompts) and adapter weights"))
    threads: int = field(default=2, metadata=_help("CPU threads of each server"))
    dtype: str = field(default="float32", metadata=_help("float32, bfloat16 or float16 (servers; adapter files fp32)"))
    extra_server_args: str = field(default="", metadata=_help(
        "more flags for every `paratune serve`, as one string in the = form (--extra-server-args='--pin para0')"))
    work_dir: Optional[str] = field(default=None, metadata=_help(
        "folder for the cached adapter sets (default: <paratune cache>/bench-tenants, i.e. $PARATUNE_CACHE or "
        "~/.cache/paratune)"))
    output: str = field(default_factory=lambda: f"docs/results/tenants/{time.strftime('%Y-%m-%d')}", metadata=_help(
        "folder for tenants.md / tenants.json / tenants.png and the server logs (default: "
        "docs/results/tenants/<today>)"))
    idle_loads: int = field(default=100, metadata=_help(
        "before the cells, paratune loads this many distinct PARA and LoRA r=16 tenants one after another on an "
        "otherwise idle server (one 1-token request each): the cold-load latency of the store alone, apart from "
        "the loads under full load that the cells measure (0: skip)"))
    resume: bool = field(default=True, metadata=_help(
        "keep the cells of OUTPUT/tenants.json measured with the same workload and run only the missing ones"))

    def __post_init__(self):
        for name, allowed in (("systems", SYSTEMS), ("kinds", KINDS)):
            value = getattr(self, name)
            check(name, value, isinstance(value, list) and bool(value) and all(v in allowed for v in value),
                  f"a non-empty list of {', '.join(allowed)}")
        check("tenants", self.tenants, isinstance(self.tenants, list) and bool(self.tenants)
              and all(is_int(n, 1) for n in self.tenants), "a non-empty list of positive integers")
        self.tenants = sorted(set(self.tenants))
        for name in ("requests", "prompt_len", "new_tokens", "max_concurrent", "max_active_adapters",
                     "adapter_cache_bytes", "vllm_max_cpu_loras", "rank", "reduced_rank", "reduced_rank_from",
                     "repeats", "threads"):
            check(name, getattr(self, name), is_int(getattr(self, name), 1), "a positive integer")
        check("seed", self.seed, is_int(self.seed, 0), "an integer >= 0")
        check("rate", self.rate, self.rate is None or is_number(self.rate, 0), "a number of requests/s > 0, or None")
        check("rate_fraction", self.rate_fraction, is_number(self.rate_fraction, 0) and self.rate_fraction <= 1,
              "a number in (0, 1]")
        check("alpha", self.alpha, is_number(self.alpha, 0, strict=False), "a number >= 0 (0: uniform popularity)")
        check("dtype", self.dtype, self.dtype in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16")
        check("output", self.output, isinstance(self.output, str) and bool(self.output.strip()), "a folder path")
        try:
            shlex.split(self.extra_server_args)
        except ValueError as error:
            raise ValueError(f"extra_server_args must be flags as a shell would split them, got "
                             f"{self.extra_server_args!r} ({error})") from None
        if "vllm-cpu" in self.systems and self.vllm_max_cpu_loras < self.max_active_adapters:
            raise ValueError(f"vllm_max_cpu_loras must be >= max_active_adapters (vLLM --max-loras, "
                             f"{self.max_active_adapters}) when systems include vllm-cpu, got {self.vllm_max_cpu_loras}")
        if not self.cells_per_repeat():
            raise ValueError(f"no system serves any of the kinds {self.kinds} (vllm-cpu serves base and lora only)")

    def rank_for(self, n: int) -> int:
        return self.reduced_rank if n >= self.reduced_rank_from else self.rank

    def workload(self) -> dict:
        """The settings a measured cell depends on (besides system, kind, N): resuming keeps cells only if these
        are unchanged."""
        keys = ("requests", "rate", "rate_fraction", "alpha", "prompt_len", "new_tokens", "max_concurrent",
                "max_active_adapters", "adapter_cache_bytes", "vllm_max_cpu_loras", "rank", "reduced_rank",
                "reduced_rank_from", "seed", "threads", "dtype", "extra_server_args")
        return {k: getattr(self, k) for k in keys}

    def cells_per_repeat(self) -> list[tuple[str, str, int]]:
        """(system, kind, N) in run order: base once (N=0), then at each N the adapter kinds, the systems
        alternating (paratune para, vllm-cpu lora, paratune lora) so that machine noise hits them alike."""
        base = [(s, "base", 0) for s in self.systems if "base" in self.kinds]
        pairs = [(s, k) for k in self.kinds if k != "base" for s in self.systems if k in SYSTEM_KINDS[s]]
        return base + [(s, k, n) for n in self.tenants for s, k in alternate(pairs)]


def alternate(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pairs`` reordered so that no system runs twice in a row where another one can come between."""
    out, rest = [], list(pairs)
    while rest:
        pick = next((p for p in rest if not out or p[0] != out[-1][0]), rest[0])
        out.append(pick)
        rest.remove(pick)
    return out


# ----- trace ---------------------------------------------------------------------------------------------------
def zipf_tenants(n_tenants: int, n_requests: int, alpha: float, seed) -> list[int]:
    """The tenant (0..n_tenants-1) of each request: popularity rank k has probability ~ 1/k^alpha, and ranks are
    given to tenants in a seeded random order (the most popular tenant is not always adapter 0, so a server that
    treats low-numbered or first-listed adapters differently gains nothing)."""
    from .serve_bench import _seed

    rng = random.Random(_seed(("zipf", seed, n_tenants, alpha)))
    by_rank = list(range(n_tenants))
    rng.shuffle(by_rank)
    cumulative = list(itertools.accumulate(1 / k ** alpha for k in range(1, n_tenants + 1)))
    return [by_rank[k] for k in rng.choices(range(n_tenants), cum_weights=cumulative, k=n_requests)]


@dataclass
class Trace:
    arrivals: list[float]  # send times, seconds from the start
    tenants: list[int]  # tenant of each request (ignored for base)
    prompts: list[str]

    def first_use(self) -> list[bool]:
        """True for each tenant's first request: the cold one on a server that starts with no adapter loaded."""
        seen: set[int] = set()
        out = []
        for t in self.tenants:
            out.append(t not in seen)
            seen.add(t)
        return out


def make_trace(cfg: TenantsConfig, n_tenants: int, rate: float, prompts: list[str]) -> Trace:
    from .http_load import poisson_arrivals
    from .serve_bench import _seed

    arrivals = poisson_arrivals(cfg.requests, rate, seed=_seed(("arrivals", cfg.seed)))
    return Trace(arrivals, zipf_tenants(max(n_tenants, 1), cfg.requests, cfg.alpha, cfg.seed), prompts)


# ----- load generator --------------------------------------------------------------------------------------------
async def _replay(url: str, bodies: list[dict], arrivals: list[float], timeout: float) -> tuple[list[dict], float]:
    """Open loop: body i streamed at ``arrivals[i]``; per request the time to the first token, the tokens from the
    final chunk's ``usage`` (one per chunk without it) and the adapter-cache header."""
    import httpx

    client = httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=httpx.Limits(
        max_connections=len(bodies), max_keepalive_connections=len(bodies)))
    t0 = time.perf_counter()

    async def one(i: int) -> dict:
        delay = arrivals[i] - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        start = time.perf_counter() - t0
        rec = {"index": i, "start": start, "ttft": None, "status": 0, "tokens": 0, "cache": None, "error": None}
        chunks = 0
        try:
            body = {**bodies[i], "stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", url.rstrip("/") + "/v1/completions", json=body) as response:
                rec["status"] = response.status_code
                rec["cache"] = response.headers.get(CACHE_HEADER)
                if response.status_code != 200:
                    rec["error"] = (await response.aread()).decode(errors="replace")[:300]
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                            continue
                        data = json.loads(line[5:])
                        if "error" in data:
                            rec["error"] = json.dumps(data)[:300]
                            break
                        if (data.get("choices") or [{}])[0].get("text"):
                            chunks += 1
                            if rec["ttft"] is None:
                                rec["ttft"] = time.perf_counter() - t0 - start
                        if data.get("usage"):
                            rec["tokens"] = int(data["usage"].get("completion_tokens", 0))
            rec["tokens"] = rec["tokens"] or chunks
        except Exception as error:  # a failed request is counted, never fatal to the run
            rec["error"] = f"{type(error).__name__}: {error}"[:300]
        rec["latency"] = time.perf_counter() - t0 - start
        return rec

    async with client:
        records = await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return list(records), time.perf_counter() - t0


def replay(url: str, bodies: list[dict], arrivals: list[float], timeout: float = 900.0) -> tuple[list[dict], float]:
    return asyncio.run(_replay(url, bodies, arrivals, timeout))


# ----- servers ---------------------------------------------------------------------------------------------------
def paratune_command(cfg: TenantsConfig, adapter_dir: Path, port: int) -> list[str]:
    from .serve_bench import SERVER_LAUNCHER

    slot = cfg.prompt_len + cfg.new_tokens + 64  # KV slots sized to the workload, as `bench serve` does
    return [sys.executable, "-c", SERVER_LAUNCHER, "serve", "--adapter-dir", str(adapter_dir), "--port", str(port),
            "--max-concurrent", str(cfg.max_concurrent), "--queue-size", "100000",
            "--max-completion-tokens", str(max(cfg.new_tokens, 1024)),
            "--kv-budget-tokens", str(max(65536, cfg.max_concurrent * slot * 2)), "--max-seq-len", str(slot),
            "--dtype", cfg.dtype, "--timeout-keep-alive", "600",
            "--max-active-adapters", str(cfg.max_active_adapters),
            "--adapter-cache-bytes", str(cfg.adapter_cache_bytes), *shlex.split(cfg.extra_server_args)]


def vllm_command(cfg: TenantsConfig, adapter_dir: Path | None, port: int, rank: int) -> tuple[list[str], dict]:
    from .vllm_cpu import LORA_RANKS, server_command

    # vLLM preallocates its LoRA buffers at --max-lora-rank and accepts only some values: the smallest that fits
    max_rank = min((r for r in LORA_RANKS if r >= rank), default=max(LORA_RANKS))
    kw = {"resolver_dir": adapter_dir, "max_loras": cfg.max_active_adapters, "max_cpu_loras": cfg.vllm_max_cpu_loras,
          "max_lora_rank": max_rank} if adapter_dir is not None else {}
    return server_command(port, dtype=cfg.dtype, max_model_len=cfg.prompt_len + cfg.new_tokens + 64,
                          max_num_seqs=cfg.max_concurrent, threads=cfg.threads, **kw)


def _get(url: str, timeout: float = 30):
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        response = httpx.get(url, timeout=timeout)
        if response.status_code == 200:
            return response
    return None


def base_model_name(url: str) -> str:
    """The served model that is no adapter (paratune and vLLM list adapters with a ``parent``)."""
    response = _get(url + "/v1/models")
    if response is None:
        raise RuntimeError(f"{url}/v1/models did not answer 200")
    return next(m["id"] for m in response.json()["data"] if not m.get("parent"))


# ----- the benchmark -----------------------------------------------------------------------------------------------
class Tenants:
    def __init__(self, cfg: TenantsConfig, log=print):
        self.cfg = cfg
        self.log = log
        self.runs: list[dict] = []
        self.meta: dict = {}
        self.commands: dict = {}
        self.sets: dict = {}
        self.out = Path(cfg.output)
        self.logs = self.out / "logs"
        self.rate = cfg.rate
        self.rate_source = "flag" if cfg.rate is not None else None
        self._prompts: dict = {}

    # -- setup
    def setup(self) -> None:
        import torch

        from ..models import cache_dir, load_backbone
        from .adapters import template
        from .serve_bench import word_pool

        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work = Path(cfg.work_dir) if cfg.work_dir else cache_dir() / "bench-tenants"
        (self.work / "empty").mkdir(parents=True, exist_ok=True)  # the base servers' --adapter-dir
        # the adapter files are fp32 whatever --dtype is (the servers cast on load), so one cached set serves all
        backbone = load_backbone("smollm2-135m-instruct", dtype=torch.float32)
        self.tokenizer, self.words = backbone.tokenizer, word_pool(backbone.tokenizer)
        needed = {(k, cfg.rank_for(n)) for s, k, n in cfg.cells_per_repeat() if k != "base"}
        self.templates = {key: template(backbone.model, key[0], rank=key[1]) for key in sorted(needed)}
        del backbone  # the model was needed for the templates only
        if "vllm-cpu" in cfg.systems:
            try:
                from . import vllm_cpu
            except ImportError as error:
                raise ModuleNotFoundError(f"systems include vllm-cpu, but paratune.bench.vllm_cpu cannot be "
                                          f"imported ({error}); run with --systems paratune") from None
            vllm_cpu.ensure_venv(self.log)
            self.meta["vllm"] = vllm_cpu.info()

    def adapter_dir(self, kind: str, n: int) -> Path:
        from .adapters import adapter_set

        rank = self.cfg.rank_for(n)
        if (kind, n) not in self.sets:
            self.sets[(kind, n)] = adapter_set(None, kind, n, self.work / "adapters", rank=rank, seed=self.cfg.seed,
                                               log=self.log, tpl=self.templates[(kind, rank)])
        return self.sets[(kind, n)]

    def prompts(self, n: int, purpose: str) -> list[str]:
        """``n`` distinct prompts, the same at every N and for every system. Warm-up and calibration get prompts of
        their own: a server with a prefix cache (vLLM) must not meet a measured prompt before the trace sends it."""
        from .serve_bench import make_prompts

        key = (purpose, n)
        if key not in self._prompts:
            self._prompts[key] = make_prompts(self.tokenizer, self.words, n, self.cfg.prompt_len,
                                              ("tenants", purpose, self.cfg.seed))
        return self._prompts[key]

    # -- resume
    def load_previous(self) -> None:
        """Cells of an earlier run of the same workload in OUTPUT/tenants.json (and its measured rate)."""
        path = self.out / "tenants.json"
        if not self.cfg.resume or not path.is_file():
            return
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            self.log(f"not resuming: {path} is unreadable ({error})")
            return
        workload = {**self.cfg.workload(), "rate": self.rate}
        old_workload = dict(old.get("meta", {}).get("workload", {}))
        if self.cfg.rate is None and old.get("meta", {}).get("rate_source") == "measured":
            old_workload["rate"] = None  # a measured rate is reused, so the resumed cells see the same trace
        if old_workload != workload:
            changed = sorted(k for k in workload.keys() | old_workload.keys() if workload.get(k) != old_workload.get(k))
            self.log(f"not resuming from {path}: the workload changed ({', '.join(changed)}); it will be overwritten")
            return
        self.runs = list(old.get("runs", []))
        if self.cfg.rate is None:
            self.rate, self.rate_source = old["meta"].get("rate"), "measured"
            self.meta["rate_calibration"] = old["meta"].get("rate_calibration")
        self.log(f"resuming: {len(self.runs)} cells from {path}")

    def done(self) -> set:
        return {(r["repeat"], r["system"], r["kind"], r["tenants"]) for r in self.runs}

    # -- servers
    @contextlib.contextmanager
    def server(self, system: str, kind: str, n: int, name: str):
        """A fresh server for one cell: yields (url, process, start-up seconds, log path)."""
        from .serve_bench import free_port, server_process

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        adapters = self.adapter_dir(kind, n) if kind != "base" else None
        if system == "paratune":
            cmd = paratune_command(self.cfg, adapters or self.work / "empty", port)
            env = {**os.environ, "OMP_NUM_THREADS": str(self.cfg.threads), "PYTHONUNBUFFERED": "1"}
        else:
            cmd, env = vllm_command(self.cfg, adapters, port, self.cfg.rank_for(n))
        self.commands.setdefault(f"{system} {kind}", shlex.join(cmd))
        log_path = self.logs / f"{name}.log"
        start = time.perf_counter()
        with server_process(cmd, url, log_path, env=env, timeout=900) as proc:
            yield url, proc, time.perf_counter() - start, log_path

    def calibrate(self) -> float:
        """Requests/s of --max-concurrent closed-loop clients on the base model: the server's capacity."""
        from .http_load import run_closed

        cfg = self.cfg
        system = "paratune" if "paratune" in cfg.systems else cfg.systems[0]
        with self.server(system, "base", 0, f"calibrate-{system}") as (url, _, _, _):
            model = base_model_name(url)
            body = {"model": model, "max_tokens": cfg.new_tokens, "temperature": 0.0, "ignore_eos": True}
            run_closed(url, [{**body, "prompt": p, "max_tokens": 2} for p in self.prompts(cfg.max_concurrent, "warm")],
                       cfg.max_concurrent)  # warm-up
            n = 2 * cfg.max_concurrent
            result = run_closed(url, [{**body, "prompt": p} for p in self.prompts(n, "calibrate")], cfg.max_concurrent)
        stats = result.summary(cfg.new_tokens)
        if not stats["req_s"] or stats["errors"]:
            raise RuntimeError(f"could not measure the capacity of {system}: {stats}")
        rate = round(cfg.rate_fraction * stats["req_s"], 3)
        self.meta["rate_calibration"] = {"system": system, "clients": cfg.max_concurrent, "requests": n,
                                         "req_s": stats["req_s"], "tok_s": stats["tok_s"],
                                         "fraction": cfg.rate_fraction, "rate": rate}
        self.log(f"capacity of {system} (base, {cfg.max_concurrent} clients): {stats['req_s']:.2f} req/s, "
                 f"{stats['tok_s']:.0f} tok/s; rate {cfg.rate_fraction:g} x that = {rate:g} req/s")
        return rate

    def idle_load_latency(self) -> dict:
        """Cold loads on an idle server: ``idle_loads`` distinct tenants of each adapter kind, one request at a time,
        from a set large enough that none was loaded before; latency from the server's load histogram."""
        from .tenants_report import server_stats

        cfg, out = self.cfg, {}
        n = max([t for t in cfg.tenants if t < cfg.reduced_rank_from] + [cfg.idle_loads])
        for kind in [k for k in ("para", "lora") if k in cfg.kinds]:
            with self.server("paratune", kind, n, f"idle-loads-{kind}") as (url, _, _, _):
                import httpx

                base = base_model_name(url)
                prompt = self.prompts(1, "warm")[0]
                with httpx.Client(timeout=120) as client:
                    client.post(url + "/v1/completions", json={"model": base, "prompt": prompt, "max_tokens": 1})
                    before = _text(_get(url + "/metrics"))
                    for t in range(cfg.idle_loads):
                        client.post(url + "/v1/completions", json={"model": f"{kind}{t}", "prompt": prompt,
                                                                   "max_tokens": 1}).raise_for_status()
                    stats = server_stats(before, _text(_get(url + "/metrics")))
            out[kind] = {"tenants": cfg.idle_loads, "rank": cfg.rank, **{k: stats.get(k) for k in (
                "adapter_loads", "load_p50_s", "load_p99_s", "load_mean_s")}}
            self.log(f"idle cold loads, {kind} r={cfg.rank}: {out[kind]['adapter_loads']} loads, p50 "
                     f"{1000 * (out[kind]['load_p50_s'] or 0):.1f} ms, p99 {1000 * (out[kind]['load_p99_s'] or 0):.1f} "
                     f"ms, mean {1000 * (out[kind]['load_mean_s'] or 0):.1f} ms")
        return out

    # -- one cell
    def run_cell(self, repeat: int, system: str, kind: str, n: int) -> dict:
        from .http_load import run_closed
        from .tenants_report import parse_memory_budget, peak_rss, server_stats, summarize_requests

        cfg = self.cfg
        trace = make_trace(cfg, n, self.rate, self.prompts(cfg.requests, "trace"))
        name = f"{system}-{kind}-n{n}-r{repeat}"
        with self.server(system, kind, n, name) as (url, proc, startup, log_path):
            base = base_model_name(url)
            # warm-up on the base model (compiles, allocates) without loading any adapter: the cache stays cold
            run_closed(url, [{"model": base, "prompt": p, "max_tokens": 2, "temperature": 0.0}
                             for p in self.prompts(cfg.max_concurrent, "warm")], cfg.max_concurrent)
            names = [base] * cfg.requests if kind == "base" else [f"{kind}{t}" for t in trace.tenants]
            bodies = [{"model": m, "prompt": p, "max_tokens": cfg.new_tokens, "temperature": 0.0, "ignore_eos": True}
                      for m, p in zip(names, trace.prompts)]
            metrics_before = _text(_get(url + "/metrics"))
            records, wall = replay(url, bodies, trace.arrivals)
            metrics_after = _text(_get(url + "/metrics"))
            rss, processes = peak_rss(proc.pid, children=system == "vllm-cpu")
        headers = [r["cache"] for r in records]
        if kind == "base":
            cold, source = [False] * len(records), None
        elif system == "paratune" and all(h in ("hit", "miss") for h in headers):
            cold, source = [h == "miss" for h in headers], "header"
        else:  # vLLM tells nothing: a tenant's first request waits for its adapter (a later one may too, unseen)
            cold, source = trace.first_use(), "first use in the trace"
        run = {"repeat": repeat, "system": system, "kind": kind, "tenants": n,
               "rank": cfg.rank_for(n) if kind != "base" else None, "rate": self.rate,
               "distinct_tenants": len(set(trace.tenants)) if kind != "base" else 0,
               **summarize_requests(records, cold, cfg.new_tokens, wall), "cold_from": source,
               "header_misses": headers.count("miss"), "header_hits": headers.count("hit"),
               **server_stats(metrics_before, metrics_after),
               "startup_s": startup, "peak_rss_bytes": rss, "rss_processes": processes, "log": str(log_path)}
        if system == "paratune":
            budget = parse_memory_budget(log_path.read_text(errors="replace"))
            run["memory_budget_bytes"], run["memory_budget_line"] = budget["bytes"], budget["line"]
        return run

    # -- the whole benchmark
    def run(self, write) -> list[dict]:
        cfg = self.cfg
        self.setup()
        self.load_previous()
        if self.rate is None:
            self.rate, self.rate_source = self.calibrate(), "measured"
        self.meta.update(workload={**cfg.workload(), "rate": self.rate}, rate=self.rate, rate_source=self.rate_source)
        if cfg.idle_loads and "paratune" in cfg.systems and "idle_loads" not in self.meta:
            self.meta["idle_loads"] = self.idle_load_latency()
            write(self.runs)
        done = self.done()
        for repeat in range(cfg.repeats):
            for system, kind, n in cfg.cells_per_repeat():
                if (repeat, system, kind, n) in done:
                    continue
                run = self.run_cell(repeat, system, kind, n)
                self.runs.append(run)
                self.log(_line(run))
                write(self.runs)  # after every cell: a stopped run keeps what it measured and resumes from it
        return self.runs


def _text(response) -> str | None:
    return None if response is None else response.text


def _line(run: dict) -> str:
    def ms(key):
        return "-" if run.get(key) is None else f"{1000 * run[key]:.0f}"

    hit = "-" if run.get("hit_rate") is None else f"{run['hit_rate']:.2f}"
    text = (f"[repeat {run['repeat']}] {run['system']:<8} {run['kind']:<4} N={run['tenants']:<5} "
            f"{run['tok_s']:7.1f} tok/s  TTFT warm {ms('ttft_warm_p50_s')}/{ms('ttft_warm_p99_s')} ms, cold "
            f"{ms('ttft_cold_p50_s')}/{ms('ttft_cold_p99_s')} ms ({run['cold_requests']} cold)  load "
            f"{ms('load_p50_s')}/{ms('load_p99_s')} ms  hit rate {hit}  start {run['startup_s']:.1f} s")
    if run.get("errors") or run.get("short_requests"):
        text += f"  ({run['errors']} errors, {run['short_requests']} short: {run.get('first_errors')})"
    return text


def run(cfg: TenantsConfig, command: str, log=print) -> dict:
    from .serve_bench import _loadavg, machine_info, versions
    from .tenants_report import markdown, write_report

    bench = Tenants(cfg, log)
    meta = {"command": command, "config": asdict(cfg), "machine": {**machine_info(), "lscpu": lscpu()},
            "versions": versions()}

    def write(runs):
        meta.update(bench.meta, commands=bench.commands)
        return write_report(runs, meta, cfg.output)

    if threading.current_thread() is threading.main_thread():  # SIGTERM unwinds: servers stopped, report written
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        bench.run(write)
    finally:
        meta["machine"]["loadavg_end"] = _loadavg()
        if "vllm" in bench.meta:
            meta["versions"]["vllm"] = bench.meta["vllm"].get("vllm")
        summary = write(bench.runs)  # also after a failure: what was measured so far
    log(markdown(summary, meta))
    return summary


def lscpu() -> dict:
    """``lscpu``'s fields (model, cores, caches, flags ...), or {} where it is missing."""
    import subprocess

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}
    return {}
