"""A generic JSONL task: each line has ``prompt`` and ``answer``, optionally ``choices`` (list of full
response texts) and ``label`` (index of the correct one; then ``answer`` may be omitted).

All lines must agree: either every line has choices (scored by accuracy over choice likelihoods) or none
has (generation, scored by exact match after stripping whitespace). There is no default file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Example, Task, read_jsonl, require


class FileTask(Task):
    name = "file"
    kind = "generation"  # per file: multiple choice when the lines carry choices
    default_file = None
    max_new_tokens = 64

    def _read(self, path: Path) -> list[Example]:
        examples = []
        for where, rec in read_jsonl(path):
            prompt = require(rec, "prompt", where)
            choices = rec.get("choices")
            label = None
            if choices is not None:
                if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                    raise ValueError(f"{where}: field 'choices' must be a list of at least 2 strings")
                label = require(rec, "label", where)
                if not isinstance(label, int) or not 0 <= label < len(choices):
                    raise ValueError(f"{where}: field 'label' must be an index into 'choices', got {label!r}")
                answer = rec.get("answer") or choices[label]
            else:
                answer = require(rec, "answer", where)
            if examples and (choices is None) != (examples[0].choices is None):
                raise ValueError(f"{where}: some lines have 'choices' and others do not")
            examples.append(
                Example(
                    id=str(rec.get("id", f"file/{path.stem}/{len(examples)}")),
                    prompt=str(prompt),
                    answer=str(answer),
                    choices=choices,
                    label=label,
                )
            )
        return examples

    def is_multiple_choice(self, examples: Sequence[Example]) -> bool:
        return bool(examples) and all(e.choices is not None for e in examples)


FILE = FileTask()
