"""`paratune eval`: a thin front of ``lm_eval.simple_evaluate`` on paratune's local task definitions.

The model is a backbone with or without a PEFT adapter (PARA, LoRA, (IA)^3, prompt tuning ...), wrapped in
``paratune.evaluation.ParatuneLM`` (lm-eval's ``HFLM``; PARA adapters get the context tokens as
``para_prompt_mask``, never the continuation). Tasks are the YAMLs of ``paratune.evaluation.tasks`` over the
files in ``../shared/data`` (no hub access), plus ``multiple-choice`` over a user's JSONL file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time

from .models import DEFAULT_MODEL

# The tasks `paratune eval` offers (paratune.evaluation.tasks.TASKS; listed here so --help needs no lm-eval import).
TASK_NAMES = ("arc-easy", "bbh", "boolq", "copa", "gsm8k", "mmlu", "multiple-choice", "openbookqa",
              "social_i_qa", "squad", "sst2", "winogrande")


def run_eval(lm, task: str, data: str | None = None, limit: int | None = None, num_fewshot: int | None = None,
             apply_chat_template: bool = False, max_new_tokens: int | None = None, seed: int = 0,
             task_dir: str | None = None) -> tuple[dict, dict]:
    """(summary, lm-eval's full result dict) of ``task`` on ``lm``."""
    from .evaluation import MULTIPLE_CHOICE, simple_evaluate, summary

    if data is not None and task != MULTIPLE_CHOICE:
        raise ValueError(f"--data is for --task {MULTIPLE_CHOICE}; --task {task} reads its file under ../shared/data")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    gen_kwargs = {"max_gen_toks": max_new_tokens} if max_new_tokens else None
    start = time.perf_counter()
    results = simple_evaluate(lm, [task], data=data, limit=limit, num_fewshot=num_fewshot,
                              apply_chat_template=apply_chat_template, gen_kwargs=gen_kwargs, seed=seed,
                              task_dir=task_dir)
    result = summary(results, task)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result, results


def run(args) -> int:
    if args.task == "file":
        raise ValueError("--task file was replaced by --task multiple-choice: one JSON object per line with "
                         '"query" (str), "choices" (list of str) and "gold" (index of the correct choice)')
    if args.data is not None and args.task != "multiple-choice":
        raise ValueError(f"--data is for --task multiple-choice; --task {args.task} reads its file under ../shared/data")
    if args.task == "multiple-choice" and not args.data:
        raise ValueError("--task multiple-choice needs --data FILE (JSONL lines with query, choices, gold)")
    if args.task == "multiple-choice":
        from .evaluation import read_multiple_choice

        read_multiple_choice(args.data)  # invalid lines fail here, before the model loads
    from .evaluation import ParatuneLM, load_model, write_results

    model, tokenizer = load_model(args.model, args.adapter)
    model.to(args.device)
    lm = ParatuneLM(model, tokenizer, batch_size=args.batch_size, device=args.device)
    result, results = run_eval(lm, args.task, args.data, args.limit, args.num_fewshot, args.chat_template,
                               args.max_new_tokens, args.seed)
    result = {"model": args.model, "adapter": args.adapter, **result}
    print(json.dumps(result, indent=1))
    if args.output:
        extra = {"summary": result, "command": shlex.join(["paratune", *getattr(args, "argv", [])])}
        path, samples = write_results(results, args.output, extra)
        print(f"lm-eval results written to {path}" + (f", per-example records to {samples}" if samples else ""))
    return 0


def add_parser(commands) -> None:
    p = commands.add_parser(
        "eval", help="evaluate a backbone (+ adapter) with lm-evaluation-harness on a local task",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Runs lm_eval.simple_evaluate on paratune's local task definitions (lm-eval's own "
        "formulations; data from ../shared/data or $PARATUNE_DATA, never the hub). Multiple-choice tasks score "
        "each option's text after the context (acc; acc_norm divides the log-likelihood by the option's length "
        "in characters); gsm8k, squad and bbh generate greedily. --task multiple-choice --data F.jsonl scores "
        "a file of {\"query\", \"choices\", \"gold\"} lines as query + \" \" + choice. PARA adapters receive "
        "the context tokens as the prompt mask; any other PEFT adapter is evaluated as PEFT loads it.")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder or the embedded default")
    p.add_argument("--adapter", help="PEFT adapter folder (PARA, LoRA, IA3, prompt tuning ...); none = base")
    p.add_argument("--task", required=True, choices=[*TASK_NAMES, "file"], metavar="TASK",
                   help=f"one of: {', '.join(TASK_NAMES)}")
    p.add_argument("--data", help="the JSONL file of --task multiple-choice")
    p.add_argument("--limit", type=int, help="evaluate only the first N items (per subtask for mmlu and bbh)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: the task's; gsm8k 5, others 0)")
    p.add_argument("--chat-template", action="store_true",
                   help="render each context through the backbone's chat template (lm-eval's "
                   "apply_chat_template), as for adapters trained on chat-formatted prompts")
    p.add_argument("--max-new-tokens", type=int, help="generation length (default: the task's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write lm-eval's result JSON here, and the per-example records next to it "
                   "(<stem>.samples.jsonl)")
    p.set_defaults(func=run)
