"""Train / validation / test splits of the quality protocol's tasks, rendered exactly as lm-eval scores them.

Every split is drawn once with a fixed seed (``SPLIT_SEED``), so every method and every training seed sees the
same training examples, the same validation items and the same test items; a training seed changes the adapter
initialisation and the data order only. Validation items always come from *training* data (never the test split):
they pick the learning rate.

Rendering: each item is an lm-eval document passed through the installed lm-eval task definition
(``paratune.evaluation.tasks``), so the training prompt is byte-for-byte the context lm-eval scores:

- multiple-choice tasks (SST-2, BoolQ, ARC-Easy, OpenBookQA): ``{"query", "choices", "gold"}`` items. They are
  trained with the ``multiple-choice`` format (prompt = query as raw text, response = " " + gold choice) and
  scored through the ``multiple-choice`` file task (lm-eval's ``multiple_choice``, target delimiter " "), which
  sends lm-eval the same requests as the built-in task.
- SQuAD (generation until "\\n"): documents ``{"id", "title", "context", "question", "answers"}``; trained as a
  one-choice multiple-choice record whose choice is ``answers[0] + "\\n"`` (raw text, so the response ends the
  way lm-eval's generation stops), scored by lm-eval's generation with SQuAD v1.1 exact match / F1.

Sources (``../shared/data``; see its README):

| task | training data (validation carved from it) | test |
|---|---|---|
| sst2 | GLUE train (alps_train.tsv) | GLUE dev, all 872 |
| boolq | SuperGLUE BoolQ val (with passages), the items not in test | 500 of SuperGLUE BoolQ val |
| arc-easy | ARC-Easy train | 500 of ARC-Easy test |
| openbookqa | OpenBookQA train | OpenBookQA test, all 500 |
| squad | SQuAD v1.1 dev, articles not in test or validation | 500 questions of 24 held-out articles |

SQuAD train and full BoolQ-with-passage train splits are not available offline, so those tasks split what exists
(by article for SQuAD, so no test passage is ever trained on).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SPLIT_SEED = 1234
MC_TASKS = ("sst2", "boolq", "arc-easy", "openbookqa")
TASKS = (*MC_TASKS, "squad")
# The metric each task is judged by (what picks the learning rate and what the report compares).
MAIN_METRIC = {"sst2": "acc", "boolq": "acc", "arc-easy": "acc_norm", "openbookqa": "acc_norm", "squad": "f1"}


@dataclass(frozen=True)
class Sizes:
    train: int
    val: int
    test: int | None  # None: the whole test split


# Training sizes fit the 8 CPU-hour budget (SmolLM2-135M trains at ~100-150 tokens/s on 2 cores): 256 examples
# (128 for the long-prompt tasks BoolQ and SQuAD, ~170 and ~220 tokens each); test sets are full or 500 items.
SIZES = {
    "sst2": Sizes(256, 200, None),
    "boolq": Sizes(128, 200, 500),
    "arc-easy": Sizes(256, 200, 500),
    "openbookqa": Sizes(256, 200, None),
    "squad": Sizes(128, 100, 500),
}


@dataclass
class TaskSplits:
    task: str
    train: list[dict]  # multiple-choice training records
    val: list[dict]  # evaluation items (multiple-choice items, or SQuAD documents)
    test: list[dict]

    @property
    def metric(self) -> str:
        return MAIN_METRIC[self.task]

    @property
    def generation(self) -> bool:
        return self.task == "squad"


def _scaled(n: int | None, available: int, scale: float, floor: int = 8) -> int:
    n = available if n is None else n
    return min(available, max(floor, int(round(n * scale))))


@lru_cache(maxsize=None)
def _task_object(task: str):
    """The lm-eval task object of a paratune task name (rendered from the local data, no hub access)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from ...evaluation.run import offline
    from ...evaluation.tasks import TASKS as EVAL_TASKS, render_tasks

    offline()
    name = EVAL_TASKS[task].lm_eval_name
    folders = render_tasks([task])
    return get_task_dict([name], TaskManager(include_path=[str(f) for f in folders], include_defaults=False))[name]


def mc_item(task: str, doc: dict) -> dict:
    """A document of a built-in multiple-choice task as a multiple-choice item (lm-eval's own rendering)."""
    obj = _task_object(task)
    choices = list(obj.doc_to_choice(doc))
    gold = obj.doc_to_target(doc)
    gold = choices.index(gold) if isinstance(gold, str) else int(gold)
    return {"query": obj.doc_to_text(doc), "choices": choices, "gold": gold}


def squad_prompt(doc: dict) -> str:
    return _task_object("squad").doc_to_text(doc)


def squad_record(doc: dict) -> dict:
    """A SQuAD document as a training record: prompt = lm-eval's context, response = " " + answer + "\\n"."""
    return {"query": squad_prompt(doc), "choices": [doc["answers"][0].strip() + "\n"], "gold": 0}


def _sst2_train_docs() -> list[dict]:
    from ...evaluation.data import require_data_dir

    lines = (require_data_dir("paratune bench quality") / "sst2" / "alps_train.tsv").read_text(
        encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    s, lab = header.index("sentence"), header.index("label")
    return [{"sentence": cols[s], "label": int(cols[lab])}
            for cols in (line.split("\t") for line in lines[1:] if line.strip())]


def _docs(task: str) -> tuple[list[dict], list[dict]]:
    """(training pool, test pool) documents, each in its file's order."""
    obj = _task_object(task)
    if task == "sst2":
        return _sst2_train_docs(), list(obj.validation_docs())
    if task in ("arc-easy", "openbookqa"):
        return list(obj.training_docs()), list(obj.test_docs())
    if task in ("boolq", "squad"):
        return list(obj.validation_docs()), []  # split below
    raise ValueError(f"no quality split for task {task!r}; choose from {', '.join(TASKS)}")


def build_splits(task: str, scale: float = 1.0) -> TaskSplits:
    """The fixed train / validation / test split of ``task`` (``scale`` multiplies every size)."""
    if task not in TASKS:
        raise ValueError(f"unknown quality task {task!r}; choose from {', '.join(TASKS)}")
    sizes = SIZES[task]
    rng = random.Random(SPLIT_SEED)
    pool, test = _docs(task)
    if task == "boolq":
        rng.shuffle(pool)
        n_test = _scaled(sizes.test, len(pool) // 2, scale)
        test, pool = pool[:n_test], pool[n_test:]
    elif task == "squad":
        titles = sorted({d["title"] for d in pool})
        rng.shuffle(titles)
        test_titles, val_titles = set(titles[:24]), set(titles[24:28])
        test = [d for d in pool if d["title"] in test_titles]
        val_pool = [d for d in pool if d["title"] in val_titles]
        pool = [d for d in pool if d["title"] not in test_titles | val_titles]
        test = rng.sample(test, _scaled(sizes.test, len(test), scale))
        val = rng.sample(val_pool, _scaled(sizes.val, len(val_pool), scale))
        train = rng.sample(pool, _scaled(sizes.train, len(pool), scale))
        return TaskSplits(task, [squad_record(d) for d in train], val, test)
    else:
        test = test if sizes.test is None and scale >= 1 else rng.sample(test, _scaled(sizes.test, len(test), scale))
        rng.shuffle(pool)
    n_val = _scaled(sizes.val, len(pool) // 4, scale)
    val, rest = pool[:n_val], pool[n_val:]
    train = rest[: _scaled(sizes.train, len(rest), scale)]
    return TaskSplits(task, [mc_item(task, d) for d in train], [mc_item(task, d) for d in val],
                      [mc_item(task, d) for d in test])


def write_jsonl(items: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    return path
