"""Report of `paratune bench tenants`, and the readings it is made of.

Readings (one replayed trace, one server): ``summarize_requests`` (throughput, TTFT of warm and cold requests),
``server_stats`` (adapter loads and cache hits from two reads of Prometheus /metrics), ``parse_memory_budget``
(the ``memory budget:`` line `paratune serve` prints), ``peak_rss`` (VmHWM from /proc).

Report: a *run* is one cell's record (``repeat``, ``system``, ``kind``, ``tenants`` N, ``tok_s`` and the readings
above; base runs have N=0). Values are medians over repeats (throughput with its min-max spread); ratios are taken
within a repeat (the cells ran minutes apart, not hours) and then summarised the same way. Written as tenants.json
(meta, summary, every run), tenants.md and tenants.png (throughput vs N).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import statistics
from pathlib import Path

from .serve_report import fmt, spread  # one median (min-max) summary and format for every bench report

CACHE_HITS = "paratune_adapter_cache_hits_total"
CACHE_MISSES = "paratune_adapter_cache_misses_total"
LOAD_HISTOGRAM = "paratune_adapter_load_seconds"
EVICTIONS = "paratune_adapter_evictions_total"
SYSTEM_LABELS = {"paratune": "paratune serve", "vllm-cpu": "vLLM (CPU)"}
SYSTEM_ORDER = ("paratune", "vllm-cpu")
KIND_ORDER = ("base", "para", "lora")
GOAL_TENANTS = 2000
GOAL = 0.95  # PARA at 2,000 tenants keeps at least this share of its one-tenant throughput


# ----- readings ----------------------------------------------------------------------------------------------------
def summarize_requests(records: list[dict], cold: list[bool], new_tokens: int, wall: float) -> dict:
    """Throughput and latency of one replayed trace; ``cold[i]``: request i waited for its adapter to load."""
    from .http_load import percentile

    ok = [r for r in records if r["status"] == 200 and not r["error"]]
    tokens = sum(r["tokens"] for r in ok)
    out = {"requests": len(records), "errors": len(records) - len(ok), "completion_tokens": tokens,
           "wall_s": wall, "tok_s": tokens / wall if wall > 0 else 0.0,
           "short_requests": sum(1 for r in ok if r["tokens"] < new_tokens),
           "cold_requests": sum(1 for r in ok if cold[r["index"]]),
           "warm_requests": sum(1 for r in ok if not cold[r["index"]])}
    groups = {"": ok, "warm_": [r for r in ok if not cold[r["index"]]], "cold_": [r for r in ok if cold[r["index"]]]}
    for prefix, rs in groups.items():
        ttft = sorted(r["ttft"] for r in rs if r["ttft"] is not None)
        out[f"ttft_{prefix}p50_s"], out[f"ttft_{prefix}p99_s"] = percentile(ttft, 50), percentile(ttft, 99)
    latency = sorted(r["latency"] for r in ok)
    out["latency_p50_s"], out["latency_p99_s"] = percentile(latency, 50), percentile(latency, 99)
    errors = [r["error"] or f"HTTP {r['status']}" for r in records if r not in ok][:3]
    if errors:
        out["first_errors"] = errors
    return out



_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                samples.append((match[1], dict(_LABEL.findall(match[2] or "")), float(match[3])))
    return samples


def metric_total(samples, name: str) -> float | None:
    """Sum of ``name`` over all its label sets (None if absent); ``x_total`` and ``x`` name the same counter."""
    names = {name, name[:-6]} if name.endswith("_total") else {name, name + "_total"}
    values = [v for n, _, v in samples if n in names]
    return sum(values) if values else None


def histogram_buckets(samples, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) of histogram ``name``, summed over its other labels, by upper bound."""
    buckets: dict[float, float] = {}
    for n, labels, v in samples:
        if n == name + "_bucket" and "le" in labels:
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    return sorted(buckets.items())


def bucket_delta(after, before) -> list[tuple[float, float]]:
    """The observations between two reads of one histogram (buckets of ``after`` minus those of ``before``)."""
    earlier = dict(before)
    return [(le, c - earlier.get(le, 0.0)) for le, c in after]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: find the bucket holding rank q x count and interpolate linearly inside
    it (from 0 for the first bucket); a rank in the +Inf bucket gives the largest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower
            return le if count == below else lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


def server_stats(before: str | None, after: str | None) -> dict:
    """Adapter loads and cache hits during the trace, from two reads of /metrics (None where not exported)."""
    if after is None:
        return {}
    b, a = parse_prometheus(before or ""), parse_prometheus(after)
    out: dict = {}
    loads = bucket_delta(histogram_buckets(a, LOAD_HISTOGRAM), histogram_buckets(b, LOAD_HISTOGRAM))
    if loads:
        out["adapter_loads"] = int(loads[-1][1])
        out["load_p50_s"], out["load_p99_s"] = histogram_quantile(0.5, loads), histogram_quantile(0.99, loads)
        total = (metric_total(a, LOAD_HISTOGRAM + "_sum") or 0.0) - (metric_total(b, LOAD_HISTOGRAM + "_sum") or 0.0)
        out["load_mean_s"] = total / loads[-1][1] if loads[-1][1] else None
    for tier in ("host", "device"):  # adapters pushed out to make room: the cost of a cache smaller than the tail
        after = [v for n, labels, v in a if n == EVICTIONS and labels.get("tier") == tier]
        if after:
            before = [v for n, labels, v in b if n == EVICTIONS and labels.get("tier") == tier]
            out[f"{tier}_evictions"] = int(sum(after) - sum(before))
    hits, misses = metric_total(a, CACHE_HITS), metric_total(a, CACHE_MISSES)
    if hits is not None and misses is not None:
        hits -= metric_total(b, CACHE_HITS) or 0.0
        misses -= metric_total(b, CACHE_MISSES) or 0.0
        out["cache_hits"], out["cache_misses"] = int(hits), int(misses)
        out["hit_rate"] = hits / (hits + misses) if hits + misses else None
    return out


_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(TiB|GiB|MiB|KiB|TB|GB|MB|KB|kB|bytes|B)?(?![A-Za-z])")
_UNITS = {"TiB": 2**40, "GiB": 2**30, "MiB": 2**20, "KiB": 2**10, "TB": 1e12, "GB": 1e9, "MB": 1e6, "KB": 1e3,
          "kB": 1e3, "bytes": 1, "B": 1}


def _size(number: str, unit: str) -> int | None:
    if unit:
        return int(float(number) * _UNITS[unit])
    return int(float(number)) if float(number) >= 1024 else None  # a bare small number is a count or a share


def parse_memory_budget(log_text: str) -> dict:
    """The first ``memory budget:`` line of a server log: ``{"line": raw line or None, "bytes": int or None}``.
    The total is, in this order: a size after the word ``total``; the one size given in ``bytes``; the only
    number on one side of an ``=`` (``1.8 GiB = a 0.5 + b 1.3 GiB`` or ``a 0.5 GiB + b 1.3 GiB = 1.8 GiB``); the
    first size on the line (``2.5 GiB (weights ..., KV ...)``)."""
    for line in log_text.splitlines():
        at = line.lower().find("memory budget:")
        if at < 0:
            continue
        rest = line[at + len("memory budget:"):]
        found = None
        total = re.search(r"total\W{0,3}" + _NUMBER.pattern, rest, re.IGNORECASE)
        explicit = [n for n, unit in _NUMBER.findall(rest) if unit == "bytes"]
        if total:
            found = _size(total[1], total[2])
        elif len(explicit) == 1:
            found = int(float(explicit[0]))
        elif "=" in rest:
            for side in rest.split("="):
                numbers = _NUMBER.findall(side)
                if len(numbers) == 1 and _size(*numbers[0]) is not None:
                    found = _size(*numbers[0])
                    break
        if found is None:
            found = next((v for v in (_size(n, u) for n, u in _NUMBER.findall(rest)) if v is not None), None)
        return {"line": line.strip(), "bytes": found}
    return {"line": None, "bytes": None}


def _ppid(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return None


def peak_rss(pid: int, children: bool = False) -> tuple[int | None, int]:
    """Peak resident memory (VmHWM) of ``pid`` in bytes, summed over its descendants with ``children`` (each
    process's own peak: an upper bound of the tree's peak), and the number of processes counted."""
    pids = [pid]
    if children:
        parents = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                parents[int(entry.name)] = _ppid(int(entry.name))
        frontier = [pid]
        while frontier:
            frontier = [p for p, parent in parents.items() if parent in frontier]
            pids += frontier
    total, counted = 0, 0
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
                    counted += 1
    return (total if counted else None), counted




# ----- summary -----------------------------------------------------------------------------------------------------
def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _order(value, order) -> int:
    return order.index(value) if value in order else len(order)


MEDIAN_KEYS = ("ttft_warm_p50_s", "ttft_warm_p99_s", "ttft_cold_p50_s", "ttft_cold_p99_s", "ttft_p50_s", "ttft_p99_s",
               "latency_p50_s", "latency_p99_s", "load_p50_s", "load_p99_s", "load_mean_s", "hit_rate",
               "adapter_loads", "host_evictions", "device_evictions", "cold_requests", "distinct_tenants", "startup_s",
               "peak_rss_bytes", "memory_budget_bytes")


def summarize(runs: list[dict]) -> dict:
    """{"cells": [...], "ratios": [...]}: a cell per (system, kind, N), medians over repeats; the ratios within
    each repeat: N tenants over the fewest (per system and kind), PARA over vLLM's LoRA and over paratune's LoRA
    at each N, and PARA over the base model."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["system"], r["kind"], r["tenants"]), []).append(r)
    cells = []
    for (system, kind, n), rs in sorted(groups.items(), key=lambda kv: (
            _order(kv[0][0], SYSTEM_ORDER), _order(kv[0][1], KIND_ORDER), kv[0][2])):
        cell = {"system": system, "kind": kind, "tenants": n, "rank": rs[0].get("rank"),
                "tok_s": spread([r["tok_s"] for r in rs]), **{k: _median([r.get(k) for r in rs]) for k in MEDIAN_KEYS},
                "errors": sum(r.get("errors") or 0 for r in rs), "short_requests": sum(r.get("short_requests") or 0
                                                                                     for r in rs),
                "cold_from": rs[0].get("cold_from"), "memory_budget_line": rs[0].get("memory_budget_line")}
        cells.append(cell)
    by = {(r["system"], r["kind"], r["tenants"], r["repeat"]): r["tok_s"] for r in runs}
    repeats = sorted({r["repeat"] for r in runs})

    def ratio(num, den) -> dict | None:
        return spread([by[(*num, k)] / by[(*den, k)] for k in repeats if (*num, k) in by and by.get((*den, k))])

    ratios = []
    for system, kind in sorted({(s, k) for s, k, n in groups if k != "base"},
                               key=lambda sk: (_order(sk[0], SYSTEM_ORDER), _order(sk[1], KIND_ORDER))):
        levels = sorted(n for s, k, n in groups if (s, k) == (system, kind))
        for n in levels[1:]:
            goal = f">= {GOAL}" if (system, kind, n) == ("paratune", "para", GOAL_TENANTS) and levels[0] == 1 else ""
            value = ratio((system, kind, n), (system, kind, levels[0]))
            if value:
                ratios.append({"ratio": f"{system} {kind}: N / N={levels[0]}", "tenants": n, "goal": goal, **value})
    for den, label in ((("vllm-cpu", "lora"), "paratune para / vllm-cpu lora"),
                       (("paratune", "lora"), "paratune para / paratune lora")):
        for n in sorted(n for s, k, n in groups if (s, k) == ("paratune", "para")):
            value = ratio(("paratune", "para", n), (*den, n))
            if value:
                ratios.append({"ratio": label, "tenants": n, "goal": "", **value})
    for n in sorted(n for s, k, n in groups if (s, k) == ("paratune", "para")):
        value = ratio(("paratune", "para", n), ("paratune", "base", 0))
        if value:
            ratios.append({"ratio": "paratune para / paratune base", "tenants": n, "goal": "", **value})
    return {"cells": cells, "ratios": ratios}


# ----- markdown ----------------------------------------------------------------------------------------------------
def _ms(value) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def _count(value) -> str:
    return "-" if value is None else f"{value:g}"


def _gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.2f}"


def markdown(summary: dict, meta: dict) -> str:
    cfg, machine = meta.get("config", {}), meta.get("machine", {})
    cal = meta.get("rate_calibration") or {}
    rate = meta.get("rate")
    rate_text = "-" if rate is None else f"{rate:g} req/s"
    if cal and meta.get("rate_source") == "measured":
        rate_text += (f" ({cal.get('fraction'):g} x the {cal.get('req_s', 0):.2f} req/s that {cal.get('clients')} "
                      f"closed-loop clients got from {cal.get('system')} on the base model)")
    lines = ["# Serving many tenants: throughput and latency as distinct adapters grow", "",
             f"Command: `{meta.get('command', '')}`  ",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs"
             + (f" ({' '.join(machine['isa'])})" if machine.get("isa") else "")
             + f", load average at start {machine.get('loadavg_start', '?')}, at end "
             f"{machine.get('loadavg_end', '?')}.  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if v) + ".", "",
             f"Workload: {cfg.get('requests', '?')} requests per cell, Poisson arrivals at {rate_text}; request i "
             f"names tenant t_i drawn from a Zipf({cfg.get('alpha', '?')}) popularity over N tenants; "
             f"{cfg.get('prompt_len', '?')}-token prompts, {cfg.get('new_tokens', '?')} new tokens, greedy, EOS "
             f"ignored, streamed. The same arrivals and prompts at every N, the same tenants for every system. "
             f"Adapters: random weights on q, v, up, rank {cfg.get('rank', '?')} (rank {cfg.get('reduced_rank', '?')} "
             f"from N={cfg.get('reduced_rank_from', '?')}), loaded on first use by a fresh server per cell: "
             f"paratune --max-active-adapters {cfg.get('max_active_adapters', '?')} --adapter-cache-bytes "
             f"{cfg.get('adapter_cache_bytes', '?')}, vLLM --max-loras {cfg.get('max_active_adapters', '?')} "
             f"--max-cpu-loras {cfg.get('vllm_max_cpu_loras', '?')}; --max-concurrent "
             f"{cfg.get('max_concurrent', '?')}, "
             f"{cfg.get('threads', '?')} threads, {cfg.get('dtype', '?')}. base = no adapter (N=0). Median (min-max) "
             f"over {cfg.get('repeats', '?')} repeats; the systems alternate within each repeat.", ""]
    idle = meta.get("idle_loads") or {}
    if idle:
        lines += ["## Cold loads on an idle server", "",
                  "Distinct tenants loaded one after another (one 1-token request each), nothing else running: the "
                  "store's own latency (read the safetensors, check the shapes against the backbone, convert), from "
                  "`paratune_adapter_load_seconds`.", "",
                  "| kind | rank | loads | p50 (ms) | p99 (ms) | mean (ms) |", "|---|---|---|---|---|---|"]
        for kind, v in idle.items():
            lines.append(f"| {kind} | {v.get('rank')} | {v.get('adapter_loads')} | {_ms(v.get('load_p50_s'))} | "
                         f"{_ms(v.get('load_p99_s'))} | {_ms(v.get('load_mean_s'))} |")
        lines.append("")
    cells = summary["cells"]
    if cells:
        columns = []
        for c in cells:
            if (c["system"], c["kind"]) not in columns:
                columns.append((c["system"], c["kind"]))
        index = {(c["system"], c["kind"], c["tenants"]): c for c in cells}
        lines += ["## Output tokens/s", "", "| N | " + " | ".join(f"{SYSTEM_LABELS.get(s, s)} {k}" for s, k in columns)
                  + " |", "|---" * (len(columns) + 1) + "|"]
        for n in sorted({c["tenants"] for c in cells}):
            row = [fmt(index[(s, k, n)]["tok_s"]) if (s, k, n) in index else "-" for s, k in columns]
            lines.append(f"| {n if n else 'base'} | " + " | ".join(row) + " |")
        lines += ["", "## Latency, adapter loading, memory (medians over repeats)", "",
                  "| system | kind | N | rank | tok/s | TTFT warm p50 / p99 (ms) | TTFT cold p50 / p99 (ms) | cold "
                  "requests | load p50 / p99 (ms) | hit rate | evictions host / device | start-up (s) | peak RSS (GiB) "
                  "| memory budget (GiB) |", "|---" * 14 + "|"]
        for c in cells:
            hit = "-" if c.get("hit_rate") is None else f"{c['hit_rate']:.2f}"
            cold = _count(c.get("cold_requests"))
            lines.append(
                f"| {c['system']} | {c['kind']} | {c['tenants']} | {c['rank'] or '-'} | {fmt(c['tok_s'])} | "
                f"{_ms(c.get('ttft_warm_p50_s'))} / {_ms(c.get('ttft_warm_p99_s'))} | {_ms(c.get('ttft_cold_p50_s'))}"
                f" / {_ms(c.get('ttft_cold_p99_s'))} | {cold} | {_ms(c.get('load_p50_s'))} / "
                f"{_ms(c.get('load_p99_s'))} | {hit} | {_count(c.get('host_evictions'))} / "
                f"{_count(c.get('device_evictions'))} | "
                f"{'-' if c.get('startup_s') is None else format(c['startup_s'], '.1f')} | "
                f"{_gib(c.get('peak_rss_bytes'))} | {_gib(c.get('memory_budget_bytes'))} |")
        lines.append("")
    if summary["ratios"]:
        lines += ["## Ratios of output tokens/s (within each repeat)", "", "| ratio | N | median (min-max) | goal |",
                  "|---|---|---|---|"]
        for r in summary["ratios"]:
            lines.append(f"| {r['ratio']} | {r['tenants']} | {fmt(r, 3)} | {r['goal']} |")
        lines.append("")
    # one line per kind, at its largest N (where the adapter slot tables are largest)
    budgets = {}
    for c in cells:
        if c.get("memory_budget_line"):
            budgets[c["kind"]] = c
    if budgets:
        lines += ["Memory budget as printed by `paratune serve` (at the largest N of each kind):", "",
                  *[f"- {k}, N={c['tenants']}: `{c['memory_budget_line']}`" for k, c in budgets.items()], ""]
    warnings = [c for c in cells if c.get("errors") or c.get("short_requests")]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {c['system']} {c['kind']} N={c['tenants']}: {c['errors']} errors, "
                                        f"{c['short_requests']} requests stopped before max_tokens" for c in warnings]
        lines.append("")
    lines += ["Notes:", ""] + [f"- {n}" for n in NOTES + meta.get("notes", [])]
    return "\n".join(lines) + "\n"


NOTES = [
    "Cold requests: paratune's `paratune-adapter-cache: miss` header (the request waited for its adapter to be "
    "loaded); where a server sends no such header (vLLM), a tenant's first request in the trace. Later reloads "
    "after an eviction are then counted as warm.",
    "Load latency and hit rate come from paratune's /metrics (`paratune_adapter_load_seconds`, interpolated within "
    "its buckets as Prometheus' histogram_quantile does; `paratune_adapter_cache_hits_total` / `..._misses_total`), "
    "read before and after the trace; vLLM exports neither, so its cells show '-'.",
    "Start-up: from starting the process until /health answers 200 (polled every 0.3 s). Peak RSS: VmHWM of the "
    "server process; for vLLM the sum over its process tree (each process's own peak: an upper bound).",
    "Throughput: completion tokens (from each stream's final `usage`) over the wall time from the first send to the "
    "last response. The arrival rate is the same for every cell: a system below it finishes late, and that shows "
    "as lower tokens/s and longer TTFT.",
]


# ----- plot and files ----------------------------------------------------------------------------------------------
def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    lines: dict = {}
    for c in summary["cells"]:
        lines.setdefault((c["system"], c["kind"]), []).append(c)
    levels = sorted({c["tenants"] for c in summary["cells"] if c["tenants"] > 0})
    for (system, kind), cs in lines.items():
        label = f"{SYSTEM_LABELS.get(system, system)}, {kind}"
        style = "-" if system == "paratune" else "--"
        if kind == "base":  # no tenants: a horizontal reference across the N axis
            if levels:
                ax.axhline(cs[0]["tok_s"]["median"], linestyle=":", color="grey" if system == "paratune" else "black",
                           label=f"{label} (no adapter)")
            continue
        cs.sort(key=lambda c: c["tenants"])
        ys = [c["tok_s"]["median"] for c in cs]
        err = [[c["tok_s"]["median"] - c["tok_s"]["min"] for c in cs], [c["tok_s"]["max"] - c["tok_s"]["median"]
                                                                      for c in cs]]
        ax.errorbar([c["tenants"] for c in cs], ys, yerr=err, marker="o", capsize=3, linestyle=style, label=label)
    if levels:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the measured N are labelled
        ax.set_xticks(levels, [f"{v:,}" for v in levels])
    ax.set_xlabel("distinct tenants N (Zipf popularity, adapters loaded on demand)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Throughput vs number of tenants")
    top = max((c["tok_s"]["max"] for c in summary["cells"]), default=1.0)
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(runs: list[dict], meta: dict, output: str | Path) -> dict:
    """Write tenants.json (through a temporary file: a crash mid-write keeps the previous one), tenants.md and
    tenants.png into ``output``; return the summary."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    tmp = out / "tenants.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1, default=str))
    tmp.replace(out / "tenants.json")
    (out / "tenants.md").write_text(markdown(summary, meta))
    if summary["cells"]:
        plot(summary, out / "tenants.png")
    return summary
