"""Reading training records: JSON lists, JSONL files and ``datasets`` folders, each record remembering its file
and line (``Record.source``) so that format errors raised later still say where the bad record is; and the
deterministic train / validation split.

Each path is a JSON file holding a list of objects, a JSONL file (one object per line, blank lines skipped) or
a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
``datasets.load_from_disk``; a DatasetDict's ``"train"`` split). JSON and JSONL are parsed here rather than by
``datasets.load_dataset("json")``: that reader reports neither the line of a malformed record nor which
record lacks a field, and it needs a cache folder.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from ..jsonl import parse_jsonl

_JSONL_SUFFIXES = {".jsonl", ".ndjson", ".jsonlines"}

PathsLike = Union[str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]]]


class Record(dict):
    """A plain ``dict`` that also remembers where it came from (``source``, e.g. ``"a.jsonl line 7"``).

    ``load_records`` returns these so that format errors raised later (after a validation split, say)
    still name the file and line. Anywhere a dict is expected, a Record works.
    """

    source: str | None

    def __init__(self, *args: Any, source: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.source = source

    def __reduce__(self):  # keep ``source`` through pickling (DataLoader workers, multiprocessing)
        return (_make_record, (dict(self), self.source))


def _make_record(data: dict, source: str | None) -> Record:
    return Record(data, source=source)


def _as_path_list(paths: PathsLike) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("no data paths given")
    return out


def load_records(paths: PathsLike) -> list[dict]:
    """Read records from one or more paths and concatenate them in order.

    Each path is a JSON file holding a list of objects, a JSONL file (one object per line, blank lines
    skipped), or a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
    (the ``"train"`` split of a DatasetDict is used). The returned items are dicts (``Record``) that also
    carry a ``source`` attribute naming file and line / index for error messages.
    """
    records: list[dict] = []
    for path in _as_path_list(paths):
        if not path.exists():
            raise FileNotFoundError(f"data path {str(path)!r} does not exist")
        if path.is_dir():
            part = _read_hf_folder(path)
        else:
            part = _read_json_file(path)
        if not part:
            raise ValueError(f"data set {str(path)!r} is empty (no records)")
        records.extend(part)
    if not records:  # pragma: no cover - every part is non-empty, kept for clarity
        raise ValueError("the data set is empty (no records)")
    return records


def _read_json_file(path: Path) -> list[Record]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"data file {str(path)!r} is empty (no records)")
    if path.suffix.lower() in _JSONL_SUFFIXES:
        return _parse_jsonl(path, text)
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        return _json_list_to_records(path, data)
    # Not a JSON list: either JSONL saved under another extension, or a single JSON value.
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" or text.count("\n") > 0:
            return _parse_jsonl(path, text)
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if isinstance(data, dict) and path.suffix.lower() != ".json":  # a one-line JSONL file (.txt, no suffix)
        return _parse_jsonl(path, text)
    return _json_list_to_records(path, data)


def _json_list_to_records(path: Path, data: Any) -> list[Record]:
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON list of objects (or JSONL, one object per line), "
            f"got a JSON {_json_type(data)}"
        )
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(
                f"{path}: expected a JSON list of objects, but record index {i} is a JSON {_json_type(item)}"
            )
        out.append(Record(item, source=f"{path} record index {i}"))
    return out


def _parse_jsonl(path: Path, text: str) -> list[Record]:
    return [Record(item, source=where) for where, item in parse_jsonl(text, path)]


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def _read_hf_folder(path: Path) -> list[Record]:
    is_dict = (path / "dataset_dict.json").is_file()
    is_single = (path / "state.json").is_file() or (path / "dataset_info.json").is_file()
    if not (is_dict or is_single):
        raise ValueError(
            f"{path} is a folder but not a Hugging Face datasets folder saved with save_to_disk "
            "(no dataset_dict.json or state.json); pass a .json / .jsonl file or such a folder"
        )
    import datasets  # imported lazily: it is slow to import and only needed here

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise ValueError(
                f"{path}: the DatasetDict has no 'train' split (splits: {', '.join(sorted(ds.keys()))}); "
                "save the split you want as its own Dataset or name it 'train'"
            )
        ds = ds["train"]
        where = f"{path} [train]"
    else:
        where = str(path)
    return [Record(row, source=f"{where} row {i}") for i, row in enumerate(ds.to_list())]


def split_validation(records: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list, list]:
    """Deterministically split ``records`` into ``(train, validation)``.

    ``round(fraction * n)`` items (at least 1 when ``fraction > 0``) go to validation, chosen by a
    ``random.Random(seed)`` permutation; both parts keep the original order. The same records, fraction
    and seed always give the same split. ``fraction == 0`` returns ``(all, [])``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    items = list(records)
    n = len(items)
    if fraction == 0.0:
        return items, []
    n_val = max(1, round(fraction * n))
    if n - n_val < 1:
        raise ValueError(
            f"cannot split {n} record(s) with validation fraction {fraction}: the training part would be empty"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [r for i, r in enumerate(items) if i not in val_idx]
    val = [r for i, r in enumerate(items) if i in val_idx]
    return train, val
