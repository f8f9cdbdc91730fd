"""Writing lm-eval task YAMLs: the ``!function`` tag, atomic writes that keep unchanged files untouched, sources.

Shared by ``tasks`` (built-in tasks) and ``multiple_choice`` (the user's file task), so neither imports the other.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml

# The rendered YAMLs say ``!function utils.<name>``: lm-eval resolves that against a utils.py next to the YAML.
UTILS = "from paratune.evaluation.task_utils import *  # noqa: F401,F403\n"

ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
ACC_NORM = ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


class Function(str):
    """A YAML ``!function`` value."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def fn(name: str) -> Function:
    return Function(f"utils.{name}")


def dump(config: dict) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def write_if_changed(path: Path, text: str) -> None:
    """Atomic, and untouched when equal (datasets' cache keys on the files, so unchanged files stay cached)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def json_source(files: dict[str, Path], **extra) -> dict:
    """The dataset part of a task YAML for local JSON / JSON Lines files (split -> path)."""
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}, **extra}}


def lm_eval_tasks_dir() -> Path:
    """lm-eval's installed task folder, found without importing lm-eval (which pulls in torch and datasets)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("lm-eval is not installed (pip install lm-eval==0.4.13)")
    return Path(spec.origin).parent / "tasks"
