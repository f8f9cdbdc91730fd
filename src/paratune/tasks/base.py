"""Evaluation examples, the Task base class, and small file-reading helpers shared by the task readers.

A task reads its data file into a list of ``Example`` and scores predictions against them. Multiple-choice
tasks are scored by comparing the likelihood of each full response text in ``Example.choices`` (predictions
are choice indices); generation tasks by comparing generated text with ``Example.answer`` (predictions are
strings). Default data files live in ``../shared/data`` next to the repository (override with the
environment variable ``PARATUNE_DATA``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..jsonl import read_jsonl  # noqa: F401  (re-exported for the task readers)
from typing import Any

KINDS = ("multiple_choice", "generation")


@dataclass
class Example:
    id: str
    prompt: str
    answer: str  # gold response text
    choices: list[str] | None = None  # full response text of each option (multiple choice)
    label: int | None = None  # index of the correct choice
    meta: dict = field(default_factory=dict)


def data_root() -> Path:
    """$PARATUNE_DATA, else <repo root>/../shared/data."""
    if os.environ.get("PARATUNE_DATA"):
        return Path(os.environ["PARATUNE_DATA"])
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


class Task:
    """Base class: subclasses set ``name``, ``kind``, ``default_file`` and implement ``_read``."""

    name: str = ""
    kind: str = "generation"  # "multiple_choice" | "generation"
    default_file: str | None = None  # relative to data_root()
    max_new_tokens: int = 64  # default generation length for this task

    def resolve_path(self, path: str | os.PathLike | None) -> Path:
        if path is None:
            if self.default_file is None:
                raise ValueError(f"task {self.name!r} has no default data file; pass a path")
            p = data_root() / self.default_file
        else:
            p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{self.name} data file not found: {p}")
        return p

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Example]:
        examples = self._read(self.resolve_path(path))
        return examples if limit is None else examples[:limit]

    def _read(self, path: Path) -> list[Example]:
        raise NotImplementedError

    def is_multiple_choice(self, examples: Sequence[Example]) -> bool:
        return self.kind == "multiple_choice"

    def is_correct(self, prediction: Any, example: Example) -> bool:
        """Multiple choice: prediction is a choice index. Generation: prediction is text (exact match)."""
        if self.is_multiple_choice([example]):
            return int(prediction) == example.label
        return str(prediction).strip() == example.answer.strip()

    def score(self, predictions: Sequence[Any], examples: Sequence[Example]) -> dict:
        _check_lengths(predictions, examples)
        n = len(examples)
        correct = sum(self.is_correct(p, e) for p, e in zip(predictions, examples))
        key = "accuracy" if self.is_multiple_choice(examples) else "exact_match"
        return {key: correct / n if n else 0.0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def _check_lengths(predictions: Sequence, examples: Sequence) -> None:
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")


# ------------------------------------------------------------------------------------------- file helpers


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: malformed JSON: {e.msg}") from e


def read_json_list(path: Path) -> list[tuple[str, dict]]:
    """A JSON file holding a list of objects: (where, record) pairs, where = "<path> record <i>"."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    out = []
    for i, rec in enumerate(data):
        where = f"{path} record {i}"
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        out.append((where, rec))
    return out


def require(record: dict, name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        raise ValueError(f"{where}: missing field {name!r}")
    return record[name]
