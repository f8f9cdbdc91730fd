"""`paratune generate`: run prompts through the multi-tenant engine in one batch; JSONL out, in order.

Every flag is a field of ``GenerateConfig``; ``generate(GenerateConfig(...))`` is the same run from Python. The
flags themselves are made by the CLI's verb table (``paratune.cli.verbs``) from the dataclass: this module never
imports the CLI, which sits above it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from .engine import Engine, Request, SamplingParams
from .jsonl import read_jsonl
from .models import DEFAULT_MODEL, load_backbone
from .validation import parse_adapter_specs

_SAMPLING = {f.name for f in fields(SamplingParams)}


@dataclass
class GenerateConfig:
    """``paratune generate``; validated on construction (ValueError naming the field, the value, what is accepted).
    ``max_tokens`` ... ``seed`` are the defaults of every prompt; a prompts-file line may override them."""

    model: str = field(default=DEFAULT_MODEL, metadata={"help": "HF id, local folder or the embedded default"})
    adapter: list[str] = field(default_factory=list, metadata={
        "help": "load a PEFT adapter as NAME=PATH (repeatable)", "split": False})
    prompt: Optional[str] = field(default=None, metadata={"help": "a single prompt"})
    use_adapter: Optional[str] = field(default=None, metadata={
        "help": "adapter NAME for --prompt (default: the base model)"})
    prompts_file: Optional[str] = field(default=None, metadata={
        "help": "JSONL: {prompt, adapter, max_tokens, ...sampling}"})
    chat: bool = field(default=False, metadata={"help": "wrap prompts in the backbone's chat template"})
    max_tokens: int = field(default=64, metadata={"help": "tokens to generate at most"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    top_k: int = field(default=0, metadata={"help": "0 = no top-k cut"})
    seed: Optional[int] = field(default=None, metadata={"help": "sampling seed"})
    output: Optional[str] = field(default=None, metadata={"help": "write JSONL here instead of stdout"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N, mps or auto"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16"})

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must be a model name, folder or hub id, got {self.model!r}")
        if isinstance(self.adapter, str):
            self.adapter = [self.adapter]
        self.adapters = parse_adapter_specs(list(self.adapter or []))
        if (self.prompt is None) == (self.prompts_file is None):
            got = "both" if self.prompt is not None else "neither"
            raise ValueError(f"give exactly one of --prompt or --prompts-file (prompt, prompts_file), got {got}")
        if self.use_adapter is not None and self.use_adapter not in self.adapters:
            raise ValueError(f"use_adapter must name a loaded adapter ({sorted(self.adapters)}; load with --adapter "
                             f"NAME=PATH), got {self.use_adapter!r}")
        SamplingParams(**self.sampling())  # ValueError naming the field, its value and the accepted range
        from .models import resolve_device, resolve_dtype

        resolve_dtype(self.dtype)
        resolve_device(self.device)

    def sampling(self) -> dict:
        values = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                  "top_k": self.top_k, "seed": self.seed}
        return {k: v for k, v in values.items() if v is not None}


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


def generate(config: GenerateConfig) -> int:
    """Run ``config``'s prompts through the engine and write one JSONL line per prompt, in order."""
    adapters = config.adapters
    defaults = {"adapter": config.use_adapter, **config.sampling()}
    items = read_prompts_file(config.prompts_file, defaults) if config.prompts_file else \
        [{**defaults, "prompt": config.prompt, "_where": "--prompt"}]
    for item in items:
        if item["adapter"] is not None and item["adapter"] not in adapters:
            raise ValueError(f"{item['_where']}: adapter {item['adapter']!r} is not loaded; loaded: "
                             f"{sorted(adapters)} (load with --adapter NAME=PATH)")
    backbone = load_backbone(config.model, dtype=config.dtype, device=config.device)
    requests = []
    for item in items:
        params = {k: v for k, v in item.items() if k in _SAMPLING and v is not None}
        try:
            sampling = SamplingParams(**params)
        except ValueError as error:
            raise ValueError(f"{item['_where']}: {error}") from None
        requests.append(Request(encode(backbone.tokenizer, item["prompt"], config.chat), item["adapter"], sampling))
    # KV slots sized for the longest request, at most 64 running at once (the rest queue for a slot).
    engine = Engine(backbone.model, backbone.tokenizer, max_batch=min(max(len(requests), 1), 64),
                    max_seq_len=max(r.reserved_tokens for r in requests))
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    engine.generate(requests)
    out = open(config.output, "w", encoding="utf-8") if config.output else sys.stdout
    try:
        for request in requests:
            record = {"adapter": request.adapter, "text": request.text, "token_ids": request.output_ids,
                      "finish_reason": request.finish_reason}
            if request.params.logprobs:
                record["logprobs"] = request.logprobs
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if config.output:
            out.close()
    return 0
