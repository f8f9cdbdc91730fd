"""Score a model on a list of protocol items through lm-evaluation-harness, keeping every item's score.

Multiple-choice items go through the ``multiple-choice`` file task and SQuAD documents through the ``squad`` task
rendered over a file of those documents (``paratune.evaluation.tasks.render_squad_file``): lm-eval's own
requests, metrics and (for PARA, via ``ParatuneLM``) the context as the prompt mask. The per-item scores (in
item order) are what the paired bootstrap resamples.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .data import write_jsonl

BATCH_SIZE = 16


def _per_item(samples: list[dict], metric: str, n: int) -> list[float]:
    values = [None] * n
    for record in samples:
        values[int(record["doc_id"])] = float(record[metric])
    if any(v is None for v in values):
        raise RuntimeError(f"lm-eval returned {len(samples)} samples for {n} items")
    return values


def score(model, tokenizer, items: list[dict], generation: bool, batch_size: int = BATCH_SIZE) -> dict:
    """{"acc", "acc_norm", "n", "items": {"acc": [...], "acc_norm": [...]}, "seconds"} for multiple-choice
    items; {"f1", "exact_match", ...} for SQuAD documents."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from ...evaluation.lm import ParatuneLM
    from ...evaluation.run import offline
    from ...evaluation.tasks import render_multiple_choice, render_squad_file

    offline()
    lm = ParatuneLM(model, tokenizer, batch_size=batch_size)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="paratune-quality-eval-") as tmp:
        tmp = Path(tmp)
        data = write_jsonl(items, tmp / "items.jsonl")
        if generation:
            render_squad_file(data, tmp / "task")
            name, metrics = "squad", ("f1", "exact_match")
        else:
            render_multiple_choice(data, tmp / "data", tmp / "task")
            name, metrics = "multiple_choice", ("acc", "acc_norm")
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[name], task_manager=TaskManager(include_path=[str(tmp / "task")],
                                                             include_defaults=False),
            log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    samples = results["samples"][name]
    per_item = {m: _per_item(samples, m, len(items)) for m in metrics}
    out = {m: sum(v) / len(v) for m, v in per_item.items()}
    if generation:
        by_id = {int(r["doc_id"]): r["filtered_resps"][0] for r in samples}
        out["predictions"] = [by_id[i] for i in range(len(items))]
    return {**out, "n": len(items), "items": per_item, "seconds": time.perf_counter() - start}
