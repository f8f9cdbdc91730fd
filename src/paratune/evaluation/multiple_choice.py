"""The ``multiple-choice`` task: the user's JSONL of ``{"query", "choices", "gold"}`` items, scored as lm-eval's
``multiple_choice`` (context = query, continuations = " " + each choice; acc and acc_norm).

Its own module (not part of ``tasks``) because it needs no data layout, no hub and no lm-eval task files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .task_yaml import ACC_NORM, dump, json_source, write_if_changed

MULTIPLE_CHOICE = "multiple-choice"


def read_multiple_choice(path: str | os.PathLike) -> list[dict]:
    """Validated ``{"query", "choices", "gold"}`` items of a JSONL file, in file order (blank lines skipped);
    an invalid line raises ValueError naming the file, the line and the field."""
    from ..jsonl import read_jsonl

    items = []
    for where, record in read_jsonl(path):
        query = record.get("query")
        if not isinstance(query, str) or not query:
            raise ValueError(f"{where}: field 'query' must be a non-empty string, got {query!r}")
        choices = record.get("choices")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)):
            raise ValueError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings, "
                             f"got {choices!r}")
        gold = record.get("gold")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise ValueError(f"{where}: field 'gold' must be an integer index into 'choices' "
                             f"(0..{len(choices) - 1}), got {gold!r}")
        items.append({"query": query, "choices": choices, "gold": gold})
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def write_multiple_choice(items: list[dict], path: str | os.PathLike) -> Path:
    """Write ``{"query", "choices", "gold"}`` items as the JSONL the multiple-choice task reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: item[k] for k in ("query", "choices", "gold")}, ensure_ascii=False)
                            + "\n" for item in items), encoding="utf-8")
    return path


def render_multiple_choice(path: str | os.PathLike, data_dir: Path, out: Path) -> Path:
    """The ``multiple_choice`` task over ``path``: the validated items are copied, in file order, to a file
    named by their hash under ``data_dir`` and the YAML is written into ``out`` (a folder of its own: lm-eval
    indexes every YAML under an include path). Returns the YAML path."""
    items = read_multiple_choice(path)
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    data = data_dir / f"multiple_choice-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    write_if_changed(data, text)
    config = {"task": "multiple_choice", **json_source({"test": data}), "output_type": "multiple_choice",
              "test_split": "test", "doc_to_text": "{{query}}", "doc_to_choice": "{{choices}}",
              "doc_to_target": "{{gold}}", "target_delimiter": " ", "metric_list": ACC_NORM,
              "metadata": {"version": 1.0, "source": str(Path(path).resolve())}}
    target = Path(out) / "multiple_choice.yaml"
    write_if_changed(target, dump(config))
    return target
