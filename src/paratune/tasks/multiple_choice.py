"""Alpaca-format multiple-choice sets (LLM-Adapters): ARC-Easy, OpenBookQA, Social IQa, WinoGrande.

Each record has ``instruction`` (the question, the options and a final "Answer format: answer1/answer2/..."
line), ``input`` (empty), ``output`` ("the correct answer is answer2") and ``answer`` ("answer2"). The
choices are the full outputs for every option named in the "Answer format:" line (ARC has a few 3- and
5-option questions), written in the style of ``output``: ``output`` with its final label replaced.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Example, Task, read_json_list, require

_FORMAT_RE = re.compile(r"Answer format:\s*(\S+)\s*$")


def alpaca_prompt(record: dict) -> str:
    """Same prompt as the training pipeline's alpaca format: instruction + ("\\n\\n" + input)."""
    inp = record.get("input") or ""
    return record["instruction"] + (f"\n\n{inp}" if inp.strip() else "")


class AlpacaChoiceTask(Task):
    kind = "multiple_choice"
    max_new_tokens = 16

    def __init__(self, name: str, default_file: str, options: tuple[str, ...]):
        self.name = name
        self.default_file = default_file
        self.options = options  # used when the instruction has no "Answer format:" line

    def _read(self, path: Path) -> list[Example]:
        examples = []
        for i, (where, rec) in enumerate(read_json_list(path)):
            require(rec, "instruction", where)
            output = require(rec, "output", where)
            answer = require(rec, "answer", where)
            m = _FORMAT_RE.search(rec["instruction"])
            options = m.group(1).split("/") if m else list(self.options)
            if answer not in options:
                raise ValueError(f"{where}: answer {answer!r} is not one of the options {options}")
            if not output.endswith(answer):
                raise ValueError(f"{where}: output {output!r} does not end with the answer {answer!r}")
            prefix = output[: len(output) - len(answer)]
            examples.append(
                Example(
                    id=f"{self.name}/{path.stem}/{i}",
                    prompt=alpaca_prompt(rec),
                    answer=output,
                    choices=[prefix + o for o in options],
                    label=options.index(answer),
                    meta={"options": options},
                )
            )
        return examples


ARC_EASY = AlpacaChoiceTask("arc-easy", "arc-easy/test.json", ("answer1", "answer2", "answer3", "answer4"))
OPENBOOKQA = AlpacaChoiceTask("openbookqa", "openbookqa/test.json", ("answer1", "answer2", "answer3", "answer4"))
SOCIAL_I_QA = AlpacaChoiceTask("social_i_qa", "social_i_qa/test.json", ("answer1", "answer2", "answer3"))
WINOGRANDE = AlpacaChoiceTask("winogrande", "winogrande/test.json", ("option1", "option2"))
