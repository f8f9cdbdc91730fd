"""JSON Lines reading with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path


_JSON_TYPES = {list: "list", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def parse_jsonl(text: str, path: str | Path) -> list[tuple[str, dict]]:
    """(where, object) pairs, where = "<path> line <n>"; blank lines are skipped; every line must hold an object."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object, got a JSON {_JSON_TYPES.get(type(item), 'value')}")
        out.append((where, item))
    return out


def read_jsonl(path: str | Path) -> list[tuple[str, dict]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return parse_jsonl(path.read_text(encoding="utf-8"), path)
