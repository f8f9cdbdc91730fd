"""`paratune eval`: a thin front of ``lm_eval.simple_evaluate`` on paratune's task definitions.

The model is a backbone with or without a PEFT adapter (PARA, LoRA, (IA)^3, prompt tuning ...), wrapped in
``paratune.evaluation.ParatuneLM`` (lm-eval's ``HFLM``; PARA adapters get the context tokens as
``para_prompt_mask``, never the continuation). Built-in tasks are lm-eval's own formulations
(``paratune.evaluation.tasks``) over ``--data FILE``, else the local copy (``--data-dir DIR`` or
``$PARATUNE_DATA``), else the hub data set lm-eval itself reads (``paratune.evaluation.sources``);
``multiple-choice`` scores a user's JSONL file. Every flag is a field of ``EvalConfig``; ``main(config)`` runs it.

``--data FILE`` takes the format of the task's file in the local copy and replaces its evaluation split (few-shot
examples, if asked for, come from the same file, never the scored item): multiple-choice: JSONL of
``{"query", "choices", "gold"}``; boolq, copa: SuperGLUE JSONL (val.jsonl); arc-easy, openbookqa, social_i_qa,
winogrande: the LLM-Adapters alpaca JSON list (test.json); sst2: GLUE's TSV (``sentence<TAB>label``); gsm8k: JSONL
of question, answer; squad: the official SQuAD v1.1 JSON; mmlu and bbh: not accepted (one file per subject: give
the folder). The exact wording is ``paratune.evaluation.sources.FILE_FORMATS``, shown by ``--help``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .evaluation.sources import FILE_FORMATS, layout
from .models import DEFAULT_MODEL
from .validation import check, is_int

# The tasks `paratune eval` offers (paratune.evaluation.tasks.TASKS; listed here so --help needs no lm-eval import).
TASK_NAMES = ("arc-easy", "bbh", "boolq", "copa", "gsm8k", "mmlu", "multiple-choice", "openbookqa",
              "social_i_qa", "squad", "sst2", "winogrande")

# Help built from the tables of paratune.evaluation.sources (which imports no lm-eval), so --help, the errors and
# the resolution cannot disagree on a format or a path.
DATA_HELP = (
    "one file to score instead of the task's own data, in the format of that task's file in the local copy "
    "(it is the whole evaluation split): multiple-choice: JSON Lines of {\"query\", \"choices\", \"gold\"}; "
    + "; ".join(f"{task}: {fmt}" for task, fmt in FILE_FORMATS.items() if fmt)
    + ". Not for " + ", ".join(t for t, fmt in FILE_FORMATS.items() if not fmt) + " (many files: use --data-dir)")
DATA_DIR_HELP = (
    "the local copy of the evaluation data (default: $PARATUNE_DATA; without either, built-in tasks read the hub "
    "data set lm-eval uses, through the datasets cache). Layout: " + "; ".join(
        f"{task}: {layout(task)}" for task in FILE_FORMATS))


@dataclass
class EvalConfig:
    """``paratune eval``; validated on construction (ValueError naming the field, the value and what is accepted)."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local folder or the embedded default"})
    adapter: Optional[str] = field(default=None, metadata={
        "help": "PEFT adapter folder (PARA, LoRA, IA3, prompt tuning ...); none = base"})
    task: Optional[str] = field(default=None, metadata={
        # "file" stays a choice so that its old users get __post_init__'s message naming its replacement
        "help": f"one of: {', '.join(TASK_NAMES)}", "choices": (*TASK_NAMES, "file")})
    data: Optional[str] = field(default=None, metadata={"help": DATA_HELP})
    data_dir: Optional[str] = field(default=None, metadata={"help": DATA_DIR_HELP})
    limit: Optional[int] = field(default=None, metadata={
        "help": "evaluate only the first N items (per subtask for mmlu and bbh)"})
    batch_size: int = field(default=8, metadata={"help": "requests per forward"})
    num_fewshot: Optional[int] = field(default=None, metadata={
        "help": "few-shot examples (default: the task's; gsm8k 5, others 0)"})
    chat_template: bool = field(default=False, metadata={
        "help": "render each context through the backbone's chat template (lm-eval's apply_chat_template), as "
                "for adapters trained on chat-formatted prompts"})
    max_new_tokens: Optional[int] = field(default=None, metadata={"help": "generation length (default: the task's)"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    seed: int = field(default=0, metadata={"help": "seed of lm-eval's sampling and of few-shot selection"})
    output: Optional[str] = field(default=None, metadata={
        "help": "write lm-eval's result JSON here, and the per-example records next to it (<stem>.samples.jsonl)"})

    def __post_init__(self):
        text = lambda v: isinstance(v, str) and bool(v.strip())  # noqa: E731
        check("model", self.model, text(self.model), "a model name, folder or hub id")
        check("adapter", self.adapter, self.adapter is None or text(self.adapter), "an adapter folder or None")
        if self.task == "file":
            raise ValueError("--task file was replaced by --task multiple-choice: one JSON object per line with "
                             '"query" (str), "choices" (list of str) and "gold" (index of the correct choice)')
        check("task", self.task, self.task in TASK_NAMES, f"one of: {', '.join(TASK_NAMES)}")
        check("data", self.data, self.data is None or text(self.data), "a file path or None")
        if self.task == "multiple-choice" and not self.data:
            raise ValueError("--task multiple-choice needs --data FILE (JSONL lines with query, choices, gold)")
        check("data", self.data, self.data is None or self.task == "multiple-choice" or FILE_FORMATS[self.task],
              f"unset for --task {self.task} (its data is one file per subject: give the folder with --data-dir "
              "DIR or $PARATUNE_DATA=DIR)")
        check("data_dir", self.data_dir,
              self.data_dir is None or (text(self.data_dir) and Path(self.data_dir).is_dir()),
              "an existing folder (the local copy of the evaluation data) or None")
        check("limit", self.limit, self.limit is None or is_int(self.limit, 1), "an integer >= 1 or None (all items)")
        check("batch_size", self.batch_size, is_int(self.batch_size, 1), "a positive integer")
        check("num_fewshot", self.num_fewshot, self.num_fewshot is None or is_int(self.num_fewshot, 0),
              "an integer >= 0 or None (the task's default)")
        check("chat_template", self.chat_template, isinstance(self.chat_template, bool), "True or False")
        check("max_new_tokens", self.max_new_tokens, self.max_new_tokens is None or is_int(self.max_new_tokens, 1),
              "a positive integer or None (the task's default)")
        check("device", self.device, text(self.device), "a device such as cpu or cuda")
        check("seed", self.seed, is_int(self.seed, 0), "an integer >= 0")
        check("output", self.output, self.output is None or text(self.output), "a file path or None")


def run_eval(lm, task: str, data: str | None = None, limit: int | None = None, num_fewshot: int | None = None,
             apply_chat_template: bool = False, max_new_tokens: int | None = None, seed: int = 0,
             task_dir: str | None = None, data_dir: str | None = None) -> tuple[dict, dict]:
    """(summary, lm-eval's full result dict) of ``task`` on ``lm``."""
    from .evaluation import simple_evaluate, summary

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    gen_kwargs = {"max_gen_toks": max_new_tokens} if max_new_tokens else None
    start = time.perf_counter()
    results = simple_evaluate(lm, [task], data=data, limit=limit, num_fewshot=num_fewshot,
                              apply_chat_template=apply_chat_template, gen_kwargs=gen_kwargs, seed=seed,
                              task_dir=task_dir, data_dir=data_dir)
    result = summary(results, task)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result, results


def main(config: EvalConfig, command: str | None = None) -> int:
    """Score ``config.task`` and print the summary JSON; with ``config.output`` also write lm-eval's files (with
    ``command``, the command line that asked for them, and the config). The data is found (and a bad file or a
    missing data set reported) before the model loads."""
    from .evaluation.multiple_choice import MULTIPLE_CHOICE, read_multiple_choice
    from .evaluation.offline_mode import offline
    from .evaluation.sources import resolve

    if config.task == MULTIPLE_CHOICE:
        read_multiple_choice(config.data)  # invalid lines fail here, before the model loads
        where, hub = str(config.data), False
    else:
        source = resolve(config.task, config.data_dir, config.data)
        where, hub = source.where, source.kind == "hub"
    if not hub:
        offline()  # local files only: no hub requests (before lm-eval imports datasets, where that is still ahead)
    from .evaluation import ParatuneLM, load_model, write_results

    model, tokenizer = load_model(config.model, config.adapter)
    model.to(config.device)
    lm = ParatuneLM(model, tokenizer, batch_size=config.batch_size, device=config.device)
    result, results = run_eval(lm, config.task, config.data, config.limit, config.num_fewshot,
                               config.chat_template, config.max_new_tokens, config.seed, data_dir=config.data_dir)
    result = {"model": config.model, "adapter": config.adapter, "data": where, **result}
    print(json.dumps(result, indent=1))
    if config.output:
        extra = {"summary": result, "command": command, "config": asdict(config)}
        path, samples = write_results(results, config.output, extra)
        print(f"lm-eval results written to {path}" + (f", per-example records to {samples}" if samples else ""))
    return 0
