"""Plots for the benchmark reports (matplotlib, written to PNG)."""

from __future__ import annotations

import statistics
from pathlib import Path


def throughput_plot(results: list[dict], concurrency: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results):
        for method in ("base", "para", "lora", "peft-lora"):
            xs, ys, lo, hi = [], [], [], []
            for conc in concurrency:
                vals = [r["decode_tok_s"] for r in res["runs"] if r["concurrency"] == conc and r["method"] == method]
                if vals:
                    med = statistics.median(vals)
                    xs.append(conc), ys.append(med), lo.append(med - min(vals)), hi.append(max(vals) - med)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.set_xlabel("concurrent requests (each on a distinct adapter)")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(res["shape"])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
