"""Evaluation on lm-evaluation-harness: an ``HFLM`` that passes PARA's prompt mask, and local task YAMLs.

    from paratune.evaluation import ParatuneLM, simple_evaluate, summary
    lm = ParatuneLM("smollm2-135m-instruct", adapter="runs/a")   # or ParatuneLM(model, tokenizer)
    results = simple_evaluate(lm, ["arc-easy"], limit=100)                # lm-eval's result dict
    summary(results, "arc-easy")        # {"task": "arc-easy", "n": 100, "acc": ..., "acc_norm": ..., ...}
"""

from .run import offline

offline()  # before lm_eval imports datasets / huggingface_hub (they read these once)

from .lm import ParatuneLM, load_model  # noqa: E402
from .run import simple_evaluate, summary, write_results  # noqa: E402
from .tasks import MULTIPLE_CHOICE, TASKS, read_multiple_choice, render_tasks, write_multiple_choice  # noqa: E402

__all__ = ["MULTIPLE_CHOICE", "ParatuneLM", "TASKS", "load_model", "offline", "read_multiple_choice",
           "render_tasks", "simple_evaluate", "summary", "write_multiple_choice", "write_results"]
