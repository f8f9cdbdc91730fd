"""GSM8K: JSONL with ``question`` and ``answer`` (reasoning, then "#### <number>").

Metric: final-number accuracy. The gold number is what follows "####"; the predicted number is the one
after the last "####" in the generated text when there is one, else the last number in the text. Commas
and a leading "$" are ignored and numbers are compared numerically ("5.00" == "5").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from .base import Example, Task, _check_lengths, read_jsonl, require

_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_number(text: str) -> float | None:
    """The final number of a GSM8K-style answer or generation, or None when it has none."""
    if "####" in text:
        m = _NUMBER_RE.search(text.rsplit("####", 1)[1].replace("$", ""))
        if m:
            return _to_float(m.group())
    found = _NUMBER_RE.findall(text.replace("$", ""))
    return _to_float(found[-1]) if found else None


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def numbers_equal(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


class GSM8KTask(Task):
    name = "gsm8k"
    kind = "generation"
    default_file = "gsm8k/test.jsonl"
    max_new_tokens = 256

    def _read(self, path: Path) -> list[Example]:
        examples = []
        for where, rec in read_jsonl(path):
            question = require(rec, "question", where)
            answer = require(rec, "answer", where)
            target = parse_number(answer) if "####" in answer else None
            if target is None:
                raise ValueError(f"{where}: answer has no '#### <number>' final answer")
            examples.append(
                Example(id=f"gsm8k/{path.stem}/{len(examples)}", prompt=question, answer=answer, meta={"target": target})
            )
        return examples

    def is_correct(self, prediction: str, example: Example) -> bool:
        return numbers_equal(parse_number(prediction), example.meta["target"])

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        _check_lengths(predictions, examples)
        n = len(examples)
        return {"accuracy": sum(self.is_correct(p, e) for p, e in zip(predictions, examples)) / n if n else 0.0}


GSM8K = GSM8KTask()
