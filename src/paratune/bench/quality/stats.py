"""Paired bootstrap confidence intervals for a difference of two methods on the same test items.

Per task, each item's score is averaged over the seeds of each method (both methods are scored on the same
items), and the difference of means is resampled over items (``n_boot`` resamples, percentile interval). For the
mean over tasks, every task's items are resampled independently in each resample and the task means averaged, so
each task weighs the same whatever its size. The seeds' spread is reported beside it, not folded in.
"""

from __future__ import annotations

import numpy as np

N_BOOT = 10_000


def seed_mean(per_seed: list[list[float]]) -> np.ndarray:
    """Items' scores averaged over seeds (every seed scored the same items in the same order)."""
    lengths = {len(s) for s in per_seed}
    if len(lengths) != 1:
        raise ValueError(f"seeds scored different numbers of items: {sorted(lengths)}")
    return np.mean(np.asarray(per_seed, dtype=np.float64), axis=0)


def paired_bootstrap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n_boot: int = N_BOOT,
                     seed: int = 0, level: float = 0.95) -> dict:
    """{"tasks": {task: {"diff", "lo", "hi"}}, "mean": {"diff", "lo", "hi"}} of mean(a) - mean(b) per task and
    on the mean over tasks; ``a[task]`` and ``b[task]`` are per-item scores of the same items."""
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    out, boots = {}, []
    for task in a:
        x, y = np.asarray(a[task], dtype=np.float64), np.asarray(b[task], dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
            raise ValueError(f"{task}: the two methods must be scored on the same non-empty item list "
                             f"(got {x.shape} and {y.shape} scores)")
        d = x - y
        idx = rng.integers(0, len(d), size=(n_boot, len(d)))
        sample = d[idx].mean(axis=1)
        boots.append(sample)
        out[task] = {"diff": float(d.mean()), "lo": float(np.quantile(sample, alpha)),
                     "hi": float(np.quantile(sample, 1 - alpha)), "n": int(len(d))}
    result = {"tasks": out}
    if boots:
        mean_boot = np.mean(boots, axis=0)
        result["mean"] = {"diff": float(np.mean([v["diff"] for v in out.values()])),
                          "lo": float(np.quantile(mean_boot, alpha)), "hi": float(np.quantile(mean_boot, 1 - alpha))}
    return result
