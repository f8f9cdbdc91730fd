"""Evaluation on lm-evaluation-harness: an ``HFLM`` that passes PARA's prompt mask, and paratune's task YAMLs.

    from paratune.evaluation import ParatuneLM, simple_evaluate, summary
    lm = ParatuneLM("smollm2-135m-instruct", adapter="runs/a")   # or ParatuneLM(model, tokenizer)
    results = simple_evaluate(lm, ["arc-easy"], limit=100)                # lm-eval's result dict
    summary(results, "arc-easy")        # {"task": "arc-easy", "n": 100, "acc": ..., "acc_norm": ..., ...}

Names are imported on first use (PEP 562), so ``paratune.evaluation.sources`` (where the data is) can be read,
and ``offline()`` called, before lm-eval imports torch, ``datasets`` and ``huggingface_hub``.

Modules, each importing only those below it: ``run`` (simple_evaluate, summary) -> ``tasks`` (task YAMLs) ->
``multiple_choice`` / ``sources`` (where each task's data is) -> ``data`` (the local copy), ``task_yaml``;
``offline_mode`` and ``lm`` stand alone.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ParatuneLM": "lm", "load_model": "lm",
    "simple_evaluate": "run", "summary": "run", "write_results": "run",
    "TASKS": "tasks", "render_tasks": "tasks",
    "MULTIPLE_CHOICE": "multiple_choice", "read_multiple_choice": "multiple_choice",
    "write_multiple_choice": "multiple_choice",
    "DataNotFound": "sources", "resolve": "sources",
    "offline": "offline_mode",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
