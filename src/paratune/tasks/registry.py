"""Task names -> task objects."""

from __future__ import annotations

from .base import Task
from .boolq import BOOLQ
from .copa import COPA
from .file import FILE
from .gsm8k import GSM8K
from .multiple_choice import ARC_EASY, OPENBOOKQA, SOCIAL_I_QA, WINOGRANDE
from .squad import SQUAD
from .sst2 import SST2

TASKS: dict[str, Task] = {
    t.name: t for t in (BOOLQ, ARC_EASY, OPENBOOKQA, SOCIAL_I_QA, WINOGRANDE, GSM8K, SQUAD, COPA, SST2, FILE)
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
