"""`paratune eval`: score a backbone, with a PARA or any PEFT adapter or none, on a task; write JSON."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from .models import DEFAULT_MODEL, load_backbone
from .para import PROMPT_MASK_KWARG, uses_prompt_mask
from .tasks import TASKS, get_task
from .tasks.scoring import evaluate


def load_model(model_name: str, adapter: str | None):
    backbone = load_backbone(model_name)
    model = backbone.model
    if adapter:
        import peft

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"--adapter {adapter!r} has no adapter_config.json")
        model = peft.PeftModel.from_pretrained(model, adapter).eval()
    return model, backbone.tokenizer


def run_eval(model, tokenizer, task_name: str, data: str | None, limit: int | None, batch_size: int,
             max_new_tokens: int | None = None) -> dict:
    task = get_task(task_name)
    if task_name == "file" and not data:
        raise ValueError("--task file needs --data FILE (JSONL with prompt and answer)")
    examples = task.load(data, limit)
    if not examples:
        raise ValueError(f"no examples for task {task_name!r}")
    start = time.perf_counter()
    result = evaluate(model, tokenizer, task, examples, batch_size=batch_size, max_new_tokens=max_new_tokens,
                      prompt_mask_kwarg=PROMPT_MASK_KWARG if uses_prompt_mask(model) else None)
    result["seconds"] = time.perf_counter() - start
    return result


def write_json(path: str, payload: dict) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, ensure_ascii=False)
    os.replace(tmp, target)


def run(args) -> int:
    model, tokenizer = load_model(args.model, args.adapter)
    result = run_eval(model, tokenizer, args.task, args.data, args.limit, args.batch_size, args.max_new_tokens)
    result = {"model": args.model, "adapter": args.adapter, **result}
    metrics = {k: v for k, v in result.items() if k != "predictions"}
    print(json.dumps(metrics, indent=1))
    if args.output:
        write_json(args.output, result)
        print(f"metrics and {len(result['predictions'])} predictions written to {args.output}")
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate a backbone (+ adapter) on a task", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Multiple-choice tasks compare the log-likelihood of each option; SQuAD reports exact match "
        "and F1; GSM8K the final number; every task also the mean loss on the gold response tokens. PARA "
        "adapters receive the prompt mask; any other PEFT adapter is evaluated as PEFT loads it.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder or the embedded default")
    p.add_argument("--adapter", help="PEFT adapter folder (PARA, LoRA, IA3, prompt tuning ...); none = base")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--data", help="data file (default: the task's file under ../shared/data)")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: the task's)")
    p.add_argument("--output", help="write metrics + per-example predictions as JSON here")
    p.set_defaults(func=run)
