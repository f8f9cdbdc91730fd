"""The fair quality protocol of ``paratune bench quality``: a learning rate per method and task chosen on
validation data, then three seeds at that rate scored on the test split.

For every (task, method) group, in priority order (PARA and LoRA first, then PARA's element-wise variants on the
tasks where it trailed, the union adapters, LoRA on all linear layers, the (IA)^3 and prompt-tuning references,
then PARA's ablations):

1. **grid**: train seed 0 at each rate of the method's grid (``methods.LR_GRIDS``); score the validation split
   (carved from training data). The best rate by the task's main metric wins (ties: the smaller rate); when it is
   at an end of the grid the next rate beyond it is trained and scored too, once.
2. **seeds**: train seeds 1 and 2 at the chosen rate (seed 0 is the grid's run).
3. **test**: score every seed's adapter on the test split. Nothing of the test split is seen before this step.

"multitask" is one adapter trained on the union of every task's training records (the same records as the
single-task adapters), validated by the mean main metric over the tasks' validation splits and tested on each
task's test split. Ablations (one seed) take PARA's chosen rate on their task, so only the ablated setting differs;
variants are methods in their own right (grid, seeds, test), compared with PARA and LoRA by the paired bootstrap.

Every training run and every scoring is one record appended to ``runs.jsonl`` in the output folder (flushed when
it finishes), and trained adapters are kept in the paratune cache, so a stopped run resumes where it stopped and a
report can be rebuilt at any time. Records of another ``--scale`` are kept apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .data import MAIN_METRIC, TASKS, build_splits
from .methods import ABLATIONS, GRID_STEP, METHODS, VARIANTS, lr_grid, lr_key, settings

MULTITASK = "multitask"
RESULTS = "docs/results/quality/2026-12-03"  # the finished protocol: 407 records of the default plan
SEEDS = (0, 1, 2)


@dataclass
class QualityConfig:
    """``paratune bench quality``: every field is a flag."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS),
                             metadata={"help": "Tasks: " + ", ".join(TASKS) + "."})
    methods: list[str] = field(default_factory=lambda: list(METHODS),
                               metadata={"help": "Methods, in priority order: " + ", ".join(METHODS) + "."})
    multitask: bool = field(default=True, metadata={"help": "Also one adapter per method on the union of the tasks."})
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS),
                                 metadata={"help": "PARA ablations: " + ", ".join(ABLATIONS) + " (none: empty)."})
    ablation_tasks: list[str] = field(default_factory=lambda: ["sst2", "arc-easy"],
                                      metadata={"help": "Tasks the ablations run on (one seed each)."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={
        "help": "Element-wise PARA variants run as methods (own rate grid, all seeds) on --variant-tasks: "
                + ", ".join(VARIANTS) + " (none: empty)."})
    variant_tasks: list[str] = field(default_factory=lambda: ["squad"], metadata={
        "help": "Tasks the variants run on (where PARA trailed LoRA)."})
    seeds: int = field(default=len(SEEDS), metadata={"help": "Seeds per method at its chosen rate."})
    reference_methods: list[str] = field(
        default_factory=lambda: ["ia3", "prompt-tuning"],
        metadata={"help": "Methods run as references: one seed, single-task only (saves CPU hours)."})
    multitask_methods: list[str] = field(default_factory=lambda: ["para", "lora"],
                                         metadata={"help": "Methods trained on the union of the tasks."})
    batch_size: int = field(default=8, metadata={"help": "Training examples per optimizer step."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over each training set."})
    max_length: int = field(default=512, metadata={"help": "Longest training example in tokens."})
    scale: float = field(default=1.0, metadata={"help": "Multiplies every split size (0.05: a quick look)."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Backbone."})
    output: str = field(default=RESULTS, metadata={
        "help": "Folder of runs.jsonl and the report; the same folder resumes a run (default: the finished protocol's "
                "records, so the report can be rebuilt)."})
    max_hours: Optional[float] = field(default=None, metadata={"help": "Stop (cleanly) after this many hours."})

    def __post_init__(self):
        for name in ("tasks", "methods", "ablations", "ablation_tasks", "reference_methods", "multitask_methods",
                     "variants", "variant_tasks"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [v.strip() for v in value.split(",") if v.strip()])
        if self.ablations in (["none"], ["-"]):
            self.ablations = []
        if self.variants in (["none"], ["-"]):
            self.variants = []
        for task in [*self.tasks, *self.ablation_tasks, *self.variant_tasks]:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r} for the quality benchmark; choose from {', '.join(TASKS)}")
        for method in [*self.methods, *self.reference_methods, *self.multitask_methods]:
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        for ablation in self.ablations:
            if ablation not in ABLATIONS:
                raise ValueError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if not self.tasks or not self.methods:
            raise ValueError("give at least one task and one method")
        if not 1 <= self.seeds <= 10:
            raise ValueError(f"seeds must be between 1 and 10, got {self.seeds}")
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {self.scale}")
        if self.max_hours is not None and self.max_hours <= 0:
            raise ValueError(f"max_hours must be positive, got {self.max_hours}")


# ----- the record store ------------------------------------------------------------------------------------
def runs_path(cfg: QualityConfig) -> Path:
    return Path(cfg.output) / "runs.jsonl"


def load_records(cfg: QualityConfig) -> list[dict]:
    path = runs_path(cfg)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line a killed run was writing: that step simply runs again
                print(f"[quality] {path}:{number}: ignoring an incomplete last line", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{number}: not a JSON record; fix or remove that line") from None
        if record.get("scale") == cfg.scale:
            records.append(record)
    return records


def _key(kind: str, task: str, method: str, lr: float | None, seed: int, split: str | None = None) -> tuple:
    return kind, task, method, lr_key(lr) if lr is not None else None, seed, split


def _record_key(r: dict) -> tuple:
    return r["kind"], r["task"], r["method"], r.get("lr"), r["seed"], r.get("split")


class Store:
    """runs.jsonl: one JSON line per finished training run ("train") or scoring ("score")."""

    def __init__(self, cfg: QualityConfig):
        self.cfg = cfg
        self.records = {_record_key(r): r for r in load_records(cfg)}
        path = runs_path(cfg)
        if path.is_file():  # cut a killed run's incomplete last line, so the next record starts a line
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)

    def get(self, *key) -> dict | None:
        return self.records.get(_key(*key))

    def add(self, record: dict) -> dict:
        record = {**record, "scale": self.cfg.scale}
        path = runs_path(self.cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[_record_key(record)] = record
        return record


# ----- one training run --------------------------------------------------------------------------------------
def adapter_dir(cfg: QualityConfig, task: str, method: str, lr: float, seed: int) -> Path:
    """Where a trained adapter is kept: the paratune cache, keyed by the output folder and the model (runs of
    another output folder or backbone never share adapters)."""
    import hashlib

    from ...models import cache_dir

    key = hashlib.sha256(f"{Path(cfg.output).resolve()}\0{cfg.model}".encode()).hexdigest()[:12]
    return cache_dir() / "quality" / key / f"scale{cfg.scale:g}" / task / method / f"lr{lr_key(lr)}-seed{seed}"


class Protocol:
    def __init__(self, cfg: QualityConfig, log=print):
        self.cfg, self.log = cfg, log
        self.store = Store(cfg)
        self._splits: dict = {}
        self.deadline = time.time() + cfg.max_hours * 3600 if cfg.max_hours else None

    # data
    def splits(self, task: str):
        if task not in self._splits:
            self._splits[task] = build_splits(task, self.cfg.scale)
        return self._splits[task]

    def member_tasks(self, task: str) -> list[str]:
        return list(self.cfg.tasks) if task == MULTITASK else [task]

    def train_records(self, task: str, seed: int) -> list[dict]:
        records = [r for t in self.member_tasks(task) for r in self.splits(t).train]
        if task == MULTITASK:
            random.Random(seed).shuffle(records)  # the Trainer shuffles too; this only mixes the file order
        return records

    # steps
    def train(self, task: str, method: str, lr: float, seed: int) -> dict:
        """Train (or find the finished run of) one adapter; returns its "train" record."""
        done = self.store.get("train", task, method, lr, seed)
        folder = adapter_dir(self.cfg, task, method, lr, seed)
        if done and (folder / "adapter_config.json").is_file():
            return done
        self._check_deadline()
        from ...models import load_backbone
        from ...training.config import TrainConfig
        from ...training.trainer import train

        records = self.train_records(task, seed)
        steps = max(1, math.ceil(len(records) * self.cfg.epochs / self.cfg.batch_size))
        work = folder.with_name(folder.name + ".partial")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        config = TrainConfig(model=self.cfg.model, data=[str(data)], format="multiple-choice",
                             output=str(work / "run"), max_steps=steps, batch_size=self.cfg.batch_size,
                             max_length=self.cfg.max_length, seed=seed, lr=lr, save_steps=10 ** 6,
                             logging_steps=max(1, steps // 8), **settings(method))
        self.log(f"[quality] train {task}/{method} lr={lr_key(lr)} seed={seed}: {len(records)} records, "
                 f"{steps} steps")
        start = time.perf_counter()
        result = train(config, backbone=load_backbone(self.cfg.model))
        seconds = time.perf_counter() - start
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(result.output_dir, folder)
        shutil.rmtree(work, ignore_errors=True)
        record = {"kind": "train", "task": task, "method": method, "lr": lr_key(lr), "seed": seed,
                  "lr_value": lr, "settings": settings(method), "params": result.trainable_params,
                  "steps": result.steps, "final_loss": result.final_loss, "train_seconds": round(seconds, 1),
                  "train_records": len(records), "skipped": result.stats.n_skipped_too_long,
                  "tokens": result.stats.n_tokens}
        return self.store.add(record)

    def score(self, task: str, method: str, lr: float, seed: int, split: str) -> dict:
        """Scores of one adapter on the ``split`` ("val" or "test") of every member task: {task: record}."""
        out = {}
        pending = [t for t in self.member_tasks(task)
                   if self.store.get("score", task, method, lr, seed, f"{split}:{t}") is None]
        if pending:
            self.train(task, method, lr, seed)
            model, tokenizer = self._load(task, method, lr, seed)
            for t in pending:
                self._check_deadline()
                from .scoring import score

                splits = self.splits(t)
                items = splits.val if split == "val" else splits.test
                result = score(model, tokenizer, items, splits.generation)
                record = {"kind": "score", "task": task, "method": method, "lr": lr_key(lr), "seed": seed,
                          "split": f"{split}:{t}", "eval_task": t, **result}
                self.store.add(record)
                self.log(f"[quality] {split} {task}/{method} lr={lr_key(lr)} seed={seed} on {t}: "
                         f"{MAIN_METRIC[t]}={result[MAIN_METRIC[t]]:.4f} ({result['n']} items, "
                         f"{result['seconds']:.0f} s)")
        for t in self.member_tasks(task):
            out[t] = self.store.get("score", task, method, lr, seed, f"{split}:{t}")
        return out

    def _load(self, task, method, lr, seed):
        import peft

        from ...models import load_backbone

        backbone = load_backbone(self.cfg.model)
        folder = adapter_dir(self.cfg, task, method, lr, seed)
        # What a user gets: the saved adapter on a fresh backbone through PEFT (prompt tuning acts only inside
        # PeftModel.forward).
        return peft.PeftModel.from_pretrained(backbone.model, str(folder)).eval(), backbone.tokenizer

    def base_scores(self, split: str = "test") -> dict:
        """The backbone without an adapter (zero-shot) on every task's ``split``."""
        out = {}
        for t in self.cfg.tasks:
            done = self.store.get("score", t, "base", None, 0, f"{split}:{t}")
            if done is None:
                self._check_deadline()
                from ...models import load_backbone
                from .scoring import score

                backbone = load_backbone(self.cfg.model)
                splits = self.splits(t)
                result = score(backbone.model, backbone.tokenizer, splits.test if split == "test" else splits.val,
                               splits.generation)
                done = self.store.add({"kind": "score", "task": t, "method": "base", "lr": None, "seed": 0,
                                       "split": f"{split}:{t}", "eval_task": t, **result})
                self.log(f"[quality] {split} base on {t}: {MAIN_METRIC[t]}={result[MAIN_METRIC[t]]:.4f}")
            out[t] = done
        return out

    # selection
    def val_metric(self, task: str, method: str, lr: float, seed: int = 0) -> float:
        scores = self.score(task, method, lr, seed, "val")
        return sum(scores[t][MAIN_METRIC[t]] for t in scores) / len(scores)

    def choose_lr(self, task: str, method: str) -> float:
        """The grid search (with its one extension beyond an end); returns the chosen rate."""
        grid = list(lr_grid(method))
        values = {lr: self.val_metric(task, method, lr) for lr in grid}
        best = _best(values)
        if best in (grid[0], grid[-1]):
            extra = float(lr_key(best / GRID_STEP if best == grid[0] else best * GRID_STEP))
            values[extra] = self.val_metric(task, method, extra)
            best = _best(values)
        return best

    def chosen_lr(self, task: str, method: str) -> float | None:
        """The rate ``choose_lr`` picked, from finished records only (None while the grid is unfinished)."""
        grid = list(lr_grid(method))
        values = {}
        for lr in grid:
            v = self._stored_val(task, method, lr)
            if v is None:
                return None
            values[lr] = v
        best = _best(values)
        if best in (grid[0], grid[-1]):
            extra = float(lr_key(best / GRID_STEP if best == grid[0] else best * GRID_STEP))
            v = self._stored_val(task, method, extra)
            if v is None:
                return None
            values[extra] = v
            best = _best(values)
        return best

    def _stored_val(self, task, method, lr) -> float | None:
        scores = [self.store.get("score", task, method, lr, 0, f"val:{t}") for t in self.member_tasks(task)]
        if any(s is None for s in scores):
            return None
        return sum(s[MAIN_METRIC[s["eval_task"]]] for s in scores) / len(scores)

    def seeds(self, method: str) -> int:
        return 1 if method in self.cfg.reference_methods else self.cfg.seeds

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.time() > self.deadline:
            raise TimeBudgetReached()

    # the whole protocol
    def groups(self) -> list[tuple[str, str, bool]]:
        """(task, method, is_ablation) in the order they run."""
        cfg = self.cfg
        multitask = cfg.multitask and len(cfg.tasks) > 1
        main = [m for m in ("para", "lora") if m in cfg.methods]
        rest = [m for m in cfg.methods if m not in main]
        order = [(t, m, False) for t in cfg.tasks for m in main]
        order += [(t, v, False) for t in cfg.variant_tasks if t in cfg.tasks and "para" in cfg.methods
                  for v in cfg.variants]
        order += [(MULTITASK, m, False) for m in main if multitask and m in cfg.multitask_methods]
        for m in rest:
            order += [(t, m, False) for t in cfg.tasks]
            order += [(MULTITASK, m, False)] if multitask and m in cfg.multitask_methods else []
        order += [(t, a, True) for t in self.cfg.ablation_tasks for a in self.cfg.ablations]
        return order

    def run(self, after_group=lambda: None) -> None:
        self.base_scores("test")
        after_group()
        for task, method, ablation in self.groups():
            self._group(task, method, ablation)
            after_group()

    def _group(self, task: str, method: str, ablation: bool) -> None:
        if ablation:  # PARA's rate on this task, one seed: only the ablated setting differs
            lr = self.chosen_lr(task, "para") or self.choose_lr(task, "para")
            self.score(task, method, lr, 0, "val")
            self.score(task, method, lr, 0, "test")
            return
        lr = self.choose_lr(task, method)
        self.log(f"[quality] {task}/{method}: chosen lr {lr_key(lr)}")
        for seed in range(self.seeds(method)):
            self.score(task, method, lr, seed, "test")


class TimeBudgetReached(Exception):
    """``max_hours`` passed: the protocol stops between steps (everything finished is kept)."""


def _best(values: dict[float, float]) -> float:
    top = max(values.values())
    return min(lr for lr, v in values.items() if v == top)


def config_dict(cfg: QualityConfig) -> dict:
    return dataclasses.asdict(cfg)
