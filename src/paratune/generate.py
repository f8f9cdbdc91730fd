"""`paratune generate`: run prompts through the multi-tenant engine in one batch; JSONL out, in order."""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path

from .engine import Engine, Request, SamplingParams
from .jsonl import read_jsonl
from .models import load_backbone

_SAMPLING = {f.name for f in fields(SamplingParams)}


def parse_adapter_specs(specs: list[str]) -> dict[str, str]:
    adapters = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--adapter expects NAME=PATH, got {spec!r}")
        if name in adapters:
            raise ValueError(f"--adapter name {name!r} is given twice")
        adapters[name] = path
    return adapters


def read_prompts_file(path: str, defaults: dict) -> list[dict]:
    """One JSON object per line: {"prompt": str, "adapter": name or null, "max_tokens": int, ...sampling}."""
    items = []
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompts file {path!r} does not exist")
    for where, item in read_jsonl(file):
        if not isinstance(item.get("prompt"), str):
            raise ValueError(f"{where}: each line needs a string field 'prompt'")
        unknown = set(item) - _SAMPLING - {"prompt", "adapter"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: prompt, adapter, "
                             f"{', '.join(sorted(_SAMPLING))}")
        items.append({**defaults, **item, "_where": where})
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


def encode(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat:
        if not tokenizer.chat_template:
            raise ValueError("--chat needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def run(args) -> int:
    adapters = parse_adapter_specs(args.adapter or [])
    defaults = {"adapter": args.use_adapter, "max_tokens": args.max_tokens, "temperature": args.temperature,
                "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed}
    if (args.prompt is None) == (args.prompts_file is None):
        raise ValueError("give exactly one of --prompt or --prompts-file")
    items = read_prompts_file(args.prompts_file, defaults) if args.prompts_file else \
        [{**defaults, "prompt": args.prompt, "_where": "--prompt"}]
    for item in items:
        if item["adapter"] is not None and item["adapter"] not in adapters:
            raise ValueError(f"{item['_where']}: adapter {item['adapter']!r} is not loaded; loaded: "
                             f"{sorted(adapters)} (load with --adapter NAME=PATH)")
    backbone = load_backbone(args.model)
    engine = Engine(backbone.model, backbone.tokenizer, max_batch=max(len(items), 1))
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    requests = []
    for item in items:
        params = {k: v for k, v in item.items() if k in _SAMPLING and v is not None}
        try:
            sampling = SamplingParams(**params)
        except ValueError as error:
            raise ValueError(f"{item['_where']}: {error}") from None
        requests.append(Request(encode(backbone.tokenizer, item["prompt"], args.chat), item["adapter"], sampling))
    engine.generate(requests)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for request in requests:
            record = {"adapter": request.adapter, "text": request.text, "token_ids": request.output_ids,
                      "finish_reason": request.finish_reason}
            if request.params.logprobs:
                record["logprobs"] = request.logprobs
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def add_parser(commands) -> None:
    import argparse

    from .models import DEFAULT_MODEL

    p = commands.add_parser(
        "generate", help="run prompts through the multi-tenant engine",
        description="Run one prompt or a JSONL file of prompts (each may name its adapter) through the engine "
        "in one continuously batched run; prints JSONL {adapter, text, token_ids} in input order.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder or the embedded default")
    p.add_argument("--adapter", action="append", metavar="NAME=PATH", help="load a PEFT adapter (repeatable)")
    p.add_argument("--prompt", help="a single prompt")
    p.add_argument("--use-adapter", metavar="NAME", help="adapter for --prompt (default: the base model)")
    p.add_argument("--prompts-file", metavar="FILE", help="JSONL: {prompt, adapter, max_tokens, ...sampling}")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the backbone's chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--output", metavar="FILE", help="write JSONL here instead of stdout")
    p.set_defaults(func=run)
