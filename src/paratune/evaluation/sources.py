"""Where a built-in task's data comes from, decided once per task before any model is loaded.

Three sources, in this order:

1. ``--data FILE``: one file in the format of that task's file in the local layout (``FILE_FORMATS``); it is the
   evaluation split, and few-shot examples, when asked for, come from the same file (never the scored item).
2. A local copy: ``--data-dir DIR``, else ``$PARATUNE_DATA`` (``data.data_dir``), laid out as ``LOCAL_FILES``.
3. The hub data set lm-eval 0.4.13's own task definition names (``HUB``), read through the ``datasets`` cache
   (downloaded on first use; with ``HF_DATASETS_OFFLINE=1`` only the cache is read).

A task whose data is in none of them raises ``DataNotFound`` naming the task, where it looked, the hub id with the
reason it failed, and the two ways to give the data. Nothing here imports lm-eval; ``datasets`` is imported only
when the hub is tried.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .data import data_dir
from .task_yaml import lm_eval_tasks_dir

_ALPACA = ('JSON list of LLM-Adapters alpaca records (question and "{label}1: ..." options in "instruction"; '
           '"answer": {answer})')

# What ``--data FILE`` must hold, per task (None: the task's data is many files; give a folder instead).
FILE_FORMATS: dict[str, str | None] = {
    "arc-easy": _ALPACA.format(label="Answer", answer="answer1..answer4") + ", as arc-easy/test.json",
    "openbookqa": _ALPACA.format(label="Answer", answer="answer1..answer4") + ", as openbookqa/test.json",
    "social_i_qa": _ALPACA.format(label="Answer", answer="answer1..answer3") + ", as social_i_qa/test.json",
    "winogrande": _ALPACA.format(label="Option", answer="option1/option2") + ", as winogrande/test.json",
    "copa": 'SuperGLUE COPA JSON Lines: "premise", "choice1", "choice2", "question" (cause/effect), "label" (0/1)',
    "boolq": 'SuperGLUE BoolQ JSON Lines: "question", "passage", "label" (true/false)',
    "sst2": "TSV with the header sentence<TAB>label (label 0/1), as sst2/glue_dev.tsv",
    "gsm8k": 'JSON Lines: "question", "answer" (the reasoning, then "#### <number>"); 5-shot examples are drawn '
             "from the same file",
    "squad": 'the official SQuAD v1.1 JSON ({"data": [articles with "paragraphs" and "qas"]})',
    "mmlu": None,
    "bbh": None,
}

# The keys the first record of a --data file must have (the TSV columns for sst2; the top-level key for squad).
_FIELDS = {
    "arc-easy": ("instruction", "answer"), "openbookqa": ("instruction", "answer"),
    "social_i_qa": ("instruction", "answer"), "winogrande": ("instruction", "answer"),
    "copa": ("premise", "choice1", "choice2", "question", "label"), "boolq": ("question", "passage", "label"),
    "sst2": ("sentence", "label"), "gsm8k": ("question", "answer"), "squad": ("data",),
}

# The local layout (split -> file under the data folder); mmlu and bbh have one file per subject (``local_files``).
LOCAL_FILES: dict[str, dict[str, str]] = {
    "arc-easy": {"train": "arc-easy/train.json", "test": "arc-easy/test.json"},
    "openbookqa": {"train": "openbookqa/train.json", "test": "openbookqa/test.json"},
    "social_i_qa": {"validation": "social_i_qa/test.json"},
    "winogrande": {"validation": "winogrande/test.json"},
    "copa": {"train": "superglue/COPA/fewglue_train32.jsonl", "validation": "superglue/COPA/val.jsonl"},
    "boolq": {"validation": "superglue/BoolQ/val.jsonl"},
    "sst2": {"validation": "sst2/glue_dev.tsv"},
    "gsm8k": {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    "squad": {"validation": "squad/dev-v1.1.json"},
}

# The split scored from a local copy or the hub; the others are few-shot pools only.
EVAL_SPLIT = {"arc-easy": "test", "openbookqa": "test", "social_i_qa": "validation", "winogrande": "validation",
              "copa": "validation", "boolq": "validation", "sst2": "validation", "gsm8k": "test",
              "squad": "validation", "mmlu": "test", "bbh": "test"}

# lm-eval 0.4.13's hub data set per task (tasks/<task>/*.yaml: dataset_path, dataset_name). lm-eval has no SQuAD
# v1.1 task (only squadv2 / squad_completion), so squad names the hub copy of the official v1.1 data.
HUB: dict[str, tuple[str, str | None]] = {
    "arc-easy": ("allenai/ai2_arc", "ARC-Easy"),
    "openbookqa": ("allenai/openbookqa", "main"),
    "social_i_qa": ("lighteval/siqa", None),
    "winogrande": ("allenai/winogrande", "winogrande_xl"),
    "copa": ("aps/super_glue", "copa"),
    "boolq": ("aps/super_glue", "boolq"),
    "sst2": ("nyu-mll/glue", "sst2"),
    "gsm8k": ("openai/gsm8k", "main"),
    "squad": ("rajpurkar/squad", "plain_text"),
    "mmlu": ("cais/mmlu", None),  # one config per subject (``subjects``)
    "bbh": ("SaylorTwift/bbh", None),
}
BUILTIN = tuple(HUB)


class DataNotFound(FileNotFoundError):
    """No --data file, no local copy and no hub data set for a task."""


@dataclass(frozen=True)
class Source:
    """A task's data: ``kind`` "file" (``path`` = the user's file), "local" (``path`` = the data folder) or "hub"."""

    task: str
    kind: str
    path: Path | None = None

    @property
    def where(self) -> str:
        """Where the data is, for the printed result."""
        if self.kind == "hub":
            return "hub " + hub_label(self.task)
        if self.kind == "file":
            return str(self.path)
        return f"{self.path}: {layout(self.task)}"

    def files(self) -> dict[str, Path]:
        """split -> file, for a "file" or "local" source of a one-file-per-split task."""
        if self.kind == "file":
            return {"test": self.path}
        return {split: self.path / rel for split, rel in LOCAL_FILES[self.task].items()}


_DATASET_NAME = re.compile(r'^"dataset_name": "([A-Za-z0-9_]+)"$', flags=re.M)


@lru_cache(maxsize=None)
def subjects(task: str) -> tuple[str, ...]:
    """The subjects of a grouped task (mmlu: 57, bbh: 27), as lm-eval's installed YAMLs name them."""
    folder, pattern = {"mmlu": ("mmlu/continuation", "mmlu_*.yaml"), "bbh": ("bbh/zeroshot", "[!_]*.yaml")}[task]
    names = []
    for file in sorted((lm_eval_tasks_dir() / folder).glob(pattern)):
        m = _DATASET_NAME.search(file.read_text())  # a regex: BBH's files hold !function tags
        if not m:
            raise ValueError(f"unexpected lm-eval task file {file} (no dataset_name)")
        names.append(m.group(1))
    return tuple(names)


def local_files(task: str, root: Path) -> list[Path]:
    """Every file of ``task`` under the data folder ``root``."""
    if task == "mmlu":
        return [root / "mmlu" / split / f"{s}_{split}.csv" for s in subjects(task) for split in ("test", "dev")]
    if task == "bbh":
        return [root / "bbh" / "bbh" / f"{s}.json" for s in subjects(task)]
    return [root / rel for rel in LOCAL_FILES[task].values()]


def hub_ids(task: str) -> list[tuple[str, str | None]]:
    """(dataset_path, dataset_name) of every hub data set ``task`` reads."""
    path, name = HUB[task]
    return [(path, s) for s in subjects(task)] if task in ("mmlu", "bbh") else [(path, name)]


def hub_label(task: str) -> str:
    path, name = HUB[task]
    if task in ("mmlu", "bbh"):
        return f"{path} ({len(subjects(task))} configs: {subjects(task)[0]}, ...)"
    return path + (f" (config {name})" if name else "")


def layout(task: str) -> str:
    """The files of ``task`` in the local layout, in words."""
    if task == "mmlu":
        return "mmlu/test/<subject>_test.csv and mmlu/dev/<subject>_dev.csv for the 57 subjects"
    if task == "bbh":
        return "bbh/bbh/<task>.json for the 27 tasks"
    return ", ".join(LOCAL_FILES[task].values())


def resolve(task: str, folder: str | os.PathLike | None = None, data: str | os.PathLike | None = None) -> Source:
    """The source of built-in ``task``: ``data`` (a file), else the local copy (``folder``, else $PARATUNE_DATA),
    else the hub (tried here, so a failure is reported before any model loads)."""
    if task not in HUB:
        raise ValueError(f"unknown built-in task {task!r}; choose one of: {', '.join(BUILTIN)}")
    if data is not None:
        return file_source(task, data)
    root, named = data_dir(folder)
    looked = named
    if root is not None and not root.is_dir():
        looked = f"{named} is not a folder"
    elif root is not None:
        missing = [f for f in local_files(task, root) if not f.is_file()]
        if not missing:
            return Source(task, "local", root)
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        looked = f"{named} lacks {missing[0].relative_to(root)}{more}"
    try:
        for path, name in hub_ids(task):
            _load_hub(path, name)
    except Exception as error:  # any failure of the hub (offline, unknown id, ...) ends in the same advice
        ways = f"--data-dir DIR or $PARATUNE_DATA=DIR (a folder holding {layout(task)})"
        if FILE_FORMATS[task]:
            ways += f", or --data FILE ({FILE_FORMATS[task]})"
        raise DataNotFound(
            f"no data for --task {task}\n"
            f"  local copy: {looked}\n"
            f"  hub (lm-eval's data set): {hub_label(task)} could not be loaded: {type(error).__name__}: {error}\n"
            f"  give the data with {ways}") from error
    return Source(task, "hub")


_HUB_LOADED: set[tuple[str, str | None]] = set()


def _load_hub(path: str, name: str | None) -> None:
    """Load a hub data set once per process through the ``datasets`` cache (lm-eval then reads the cached copy)."""
    if (path, name) in _HUB_LOADED:
        return
    import datasets

    datasets.load_dataset(path, name)
    _HUB_LOADED.add((path, name))


def file_source(task: str, data: str | os.PathLike) -> Source:
    """``--data FILE`` for ``task``, after checking that the file exists and its first record has the task's
    fields (so a wrong file fails here, naming the file, not deep inside lm-eval)."""
    fmt = FILE_FORMATS.get(task)
    if fmt is None:
        raise ValueError(f"--data is not accepted for --task {task}: its data is {layout(task)}; give the "
                         "folder with --data-dir DIR or $PARATUNE_DATA=DIR")
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file (--task {task} reads {fmt})")
    keys = _first_record_keys(task, path)
    missing = [k for k in _FIELDS[task] if k not in keys]
    if missing:
        raise ValueError(f"--data {path}: the first record has no {missing[0]!r} (has {sorted(keys)}); "
                         f"--task {task} reads {fmt}")
    return Source(task, "file", path)


def _first_record_keys(task: str, path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    if task == "sst2":
        return set(text.split("\n", 1)[0].rstrip("\r").split("\t"))
    try:
        whole = json.loads(text)  # a JSON document (list of records, or SQuAD's object) ...
    except json.JSONDecodeError:
        whole = None
    if whole is None:  # ... else JSON Lines
        line = next((ln for ln in text.splitlines() if ln.strip()), "")
        try:
            whole = json.loads(line)
        except json.JSONDecodeError:
            return set()
    first = whole[0] if isinstance(whole, list) and whole else whole
    return set(first) if isinstance(first, dict) else set()
