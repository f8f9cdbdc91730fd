"""Run paratune's lm-eval tasks through ``lm_eval.simple_evaluate`` and summarise the result."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .offline_mode import offline  # noqa: F401  (re-exported: the quality benchmark imports it from here)
from .tasks import MULTIPLE_CHOICE, TASKS, render_tasks


def simple_evaluate(lm, tasks: list[str], *, data: str | None = None, limit: int | float | None = None,
                    num_fewshot: int | None = None, apply_chat_template: bool = False,
                    data_dir: str | None = None, task_dir: str | None = None, log_samples: bool = True,
                    seed: int = 0, gen_kwargs: dict | None = None, bootstrap_iters: int = 1000) -> dict:
    """lm-eval's result dict for paratune task names (``TASKS``) on ``lm`` (an lm-eval ``LM``). Built-in tasks
    read ``data`` (one file, one task), else the local copy (``data_dir``, else $PARATUNE_DATA), else the hub
    data set lm-eval uses (``paratune.evaluation.sources``)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    folders = render_tasks(tasks, data_dir=data_dir, data=data, out=task_dir)
    manager = TaskManager(include_path=[str(f) for f in folders], include_defaults=False)
    return lm_eval.simple_evaluate(
        model=lm, tasks=[TASKS[t].lm_eval_name for t in tasks], task_manager=manager, limit=limit,
        num_fewshot=num_fewshot, log_samples=log_samples, apply_chat_template=apply_chat_template,
        gen_kwargs=gen_kwargs, bootstrap_iters=bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed)


def _subtasks(results: dict, name: str) -> list[str]:
    """The leaf tasks of ``name`` (itself when it is a task)."""
    if name in results.get("n-samples", {}):
        return [name]
    return [t for t in results.get("n-samples", {}) if t in _group_members(results, name)]


def _group_members(results: dict, group: str) -> set[str]:
    members: set[str] = set()
    for key, subs in (results.get("group_subtasks") or {}).items():
        if key == group:
            for sub in subs:
                members.add(sub)
                members |= _group_members(results, sub)
    return members


def summary(results: dict, task: str) -> dict:
    """{"task", "n", <metric>: value, <metric>_stderr: value}: lm-eval's metrics of paratune task ``task``,
    the ``,none`` filter suffix dropped (other filters kept as ``metric,filter``)."""
    name = TASKS[task].lm_eval_name
    row = results["results"].get(name) or results.get("groups", {}).get(name, {})
    out: dict[str, Any] = {"task": task, "n": sum(int(results["n-samples"][t]["effective"])
                                                  for t in _subtasks(results, name))}
    for key, value in row.items():
        if key in ("alias", "name", "sample_len") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt in ("none", "") else key] = value
    return out


def write_results(results: dict, path: str | os.PathLike, extra: dict | None = None) -> tuple[Path, Path | None]:
    """lm-eval's result JSON (plus ``extra`` under "paratune") at ``path``; the per-example records of
    ``log_samples`` as JSON Lines next to it (``<stem>.samples.jsonl``, each line with its "task")."""
    from lm_eval.utils import handle_non_serializable

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in results.items() if k != "samples"}
    if extra:
        payload["paratune"] = extra
    _atomic_write(target, json.dumps(payload, indent=1, default=handle_non_serializable, ensure_ascii=False))
    samples = results.get("samples")
    if not samples:
        return target, None
    sample_path = target.with_name(target.stem + ".samples.jsonl")
    lines = [json.dumps({"task": task, **record}, default=handle_non_serializable, ensure_ascii=False)
             for task, records in samples.items() for record in records]
    _atomic_write(sample_path, "\n".join(lines) + "\n")
    return target, sample_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["MULTIPLE_CHOICE", "offline", "simple_evaluate", "summary", "write_results"]
