"""`paratune bench quality`: PARA vs LoRA vs (IA)^3 vs prompt tuning on SmolLM2-135M, trained by the same code.

Each cell (task or "multitask", method, seed) trains one adapter with ``paratune.training.train`` and evaluates
it on held-out data with ``paratune.tasks.scoring.evaluate``. Finished cells are appended to
``quality_cells.jsonl`` and skipped when the benchmark runs again, so a run that is stopped (or spans sessions)
loses at most the cell in progress; the report is rebuilt from every finished cell each time.

Data (see ../shared/data/README.md), subsampled with the seed:
- sst2: train on GLUE train (alps_train.tsv), evaluate on the official GLUE dev set;
- boolq, arc-easy: the train / test files (BoolQ here is question-only, as shipped);
- squad: the v1.1 dev set split by article (half the articles train, the other half evaluate);
- optional: copa (SuperGLUE val split by index), openbookqa (train/test).
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import peft
import torch
import transformers

from ..models import load_backbone
from ..para import PROMPT_MASK_KWARG, uses_prompt_mask
from ..tasks import get_task
from ..tasks.base import Example, data_root
from ..tasks.scoring import evaluate
from ..tasks.squad import split_by_title

# Method settings: PARA r=16 on q,v,up (1.40M params on SmolLM2) against LoRA r=24 on q,v (1.38M): matched.
# (IA)^3 and prompt tuning cannot reach that budget by construction; their counts are reported as they are.
METHODS = {
    "para": {"method": "para", "r": 16},
    "lora": {"method": "lora", "r": 24, "targets": ["q_proj", "v_proj"]},
    "ia3": {"method": "ia3"},
    "prompt-tuning": {"method": "prompt-tuning", "num_virtual_tokens": 20},
}

# A method may carry overrides after "@" (e.g. "lora@lr=1e-3", "para@r=8@lr=3e-3"): a learning-rate or width
# check runs as its own column, and its cells never mix with the default method's cells.
OVERRIDES = {"lr": float, "r": int}


def method_settings(method: str) -> dict:
    """TrainConfig fields of a benchmark method name such as "para" or "lora@lr=1e-3"."""
    name, *overrides = method.split("@")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} for the quality benchmark; choose from " + ", ".join(METHODS))
    settings = dict(METHODS[name])
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in OVERRIDES or not value:
            raise ValueError(f"bad override {item!r} in {method!r}: use " + " or ".join(
                f"{k}=<{t.__name__}>" for k, t in OVERRIDES.items()))
        try:
            settings[key] = OVERRIDES[key](value)
        except ValueError:
            raise ValueError(f"bad override {item!r} in {method!r}: {value!r} is not a {OVERRIDES[key].__name__}")
    return settings


@dataclass
class TaskPlan:
    train_examples: int
    steps: int
    eval_examples: int


DEFAULT_PLAN = {
    "sst2": TaskPlan(512, 64, 200),
    "boolq": TaskPlan(512, 64, 200),
    "arc-easy": TaskPlan(512, 64, 200),
    "squad": TaskPlan(256, 32, 100),
    "copa": TaskPlan(50, 24, 50),
    "openbookqa": TaskPlan(512, 64, 200),
}


@dataclass
class QualityConfig:
    tasks: list[str] = field(default_factory=lambda: ["sst2", "boolq", "arc-easy", "squad"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0])
    multitask: bool = True
    multitask_steps: int = 64
    batch_size: int = 8
    max_length: int = 384
    scale: float = 1.0  # multiplies train/eval sizes and steps (a quick look: 0.1)
    model: str = "smollm2-135m-instruct"
    output: str = "docs/results"

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in DEFAULT_PLAN]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r} for the quality benchmark; choose from "
                             + ", ".join(DEFAULT_PLAN))
        for method in self.methods:
            method_settings(method)
        if not self.seeds:
            raise ValueError("give at least one seed")
        if not 0 < self.scale <= 10:
            raise ValueError(f"--scale must be in (0, 10], got {self.scale}")


def _split(task: str, seed: int, plan: TaskPlan, scale: float) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples of a task, never overlapping."""
    t = get_task(task)
    root = data_root()
    if task == "sst2":
        train, test = t.load(str(root / "sst2" / "alps_train.tsv")), t.load()
    elif task in ("boolq", "arc-easy", "openbookqa"):
        folder = {"boolq": "boolq", "arc-easy": "arc-easy", "openbookqa": "openbookqa"}[task]
        train, test = t.load(str(root / folder / "train.json")), t.load(str(root / folder / "test.json"))
    elif task == "squad":
        train, test = split_by_title(t.load(), eval_fraction=0.5, seed=0)
    elif task == "copa":
        every = t.load()
        train, test = every[:50], every[50:]
    else:
        raise ValueError(f"the quality benchmark has no split for task {task!r}")
    rng = random.Random(seed)
    n_train, n_eval = max(8, int(plan.train_examples * scale)), max(8, int(plan.eval_examples * scale))
    train = rng.sample(train, min(n_train, len(train)))
    test = random.Random(1234).sample(test, min(n_eval, len(test)))  # the same eval set for every seed
    return train, test


def _records(examples: list[Example]) -> list[dict]:
    return [{"prompt": e.prompt, "completion": e.answer} for e in examples]


def _evaluate(model, tokenizer, task: str, examples: list[Example]) -> dict:
    result = evaluate(model, tokenizer, get_task(task), examples, batch_size=8,
                      prompt_mask_kwarg=PROMPT_MASK_KWARG if uses_prompt_mask(model) else None)
    return {k: v for k, v in result.items() if k != "predictions"}


def _train(cfg: QualityConfig, method: str, records: list[dict], steps: int, seed: int, workdir: Path):
    from ..training.config import TrainConfig
    from ..training.trainer import train

    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    backbone = load_backbone(cfg.model)
    config = TrainConfig(model=cfg.model, data=[str(data)], format="prompt-completion", output=str(workdir / "run"),
                         max_steps=steps, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed,
                         save_steps=10**6, logging_steps=max(1, steps // 8), **method_settings(method))
    start = time.perf_counter()
    result = train(config, backbone=backbone)
    seconds = time.perf_counter() - start
    # Evaluate what a user gets: the saved adapter loaded onto a fresh backbone through PEFT (prompt tuning only
    # acts inside PeftModel.forward, so the in-place-wrapped backbone alone would be the base model).
    backbone = load_backbone(cfg.model)
    model = peft.PeftModel.from_pretrained(backbone.model, result.output_dir).eval()
    return model, backbone.tokenizer, result, seconds


def run_cell(cfg: QualityConfig, task: str, method: str, seed: int, log=print) -> dict:
    """One (task or "multitask", method, seed) cell: train, then evaluate on every task of the cell."""
    tasks = cfg.tasks if task == "multitask" else [task]
    splits = {t: _split(t, seed, DEFAULT_PLAN[t], cfg.scale) for t in tasks}
    cell = {"task": task, "method": method, "seed": seed}
    if method == "base":
        backbone = load_backbone(cfg.model)
        model, tokenizer, params, train_info = backbone.model, backbone.tokenizer, 0, {}
    else:
        records = [r for t in tasks for r in _records(splits[t][0])]
        random.Random(seed).shuffle(records)
        steps = cfg.multitask_steps if task == "multitask" else DEFAULT_PLAN[task].steps
        steps = max(2, int(steps * cfg.scale))
        workdir = Path(tempfile.mkdtemp(prefix="paratune-quality-"))
        try:
            model, tokenizer, result, seconds = _train(cfg, method, records, steps, seed, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        params = result.trainable_params
        train_info = {"steps": result.steps, "final_loss": result.final_loss, "train_seconds": seconds,
                      "train_examples": len(records)}
    model.eval()
    cell.update(params=params, **train_info)
    cell["eval"] = {}
    for t in tasks:
        start = time.perf_counter()
        cell["eval"][t] = {**_evaluate(model, tokenizer, t, splits[t][1]),
                           "eval_seconds": time.perf_counter() - start}
        log(f"[quality] {task}/{method}/seed{seed} -> {t}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in cell["eval"][t].items() if isinstance(v, float)))
    return cell


def _cells_path(cfg: QualityConfig) -> Path:
    return Path(cfg.output) / "quality_cells.jsonl"


def load_cells(cfg: QualityConfig) -> list[dict]:
    path = _cells_path(cfg)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plan_cells(cfg: QualityConfig) -> list[tuple[str, str, int]]:
    cells = [(t, "base", 0) for t in cfg.tasks]
    for seed in cfg.seeds:
        cells += [(t, m, seed) for t in cfg.tasks for m in cfg.methods]
        if cfg.multitask:
            cells += [("multitask", m, seed) for m in cfg.methods]
    return cells


def run(cfg: QualityConfig, command: str, log=print) -> list[dict]:
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    done = {(c["task"], c["method"], c["seed"]) for c in load_cells(cfg) if c.get("scale") == cfg.scale}
    for task, method, seed in plan_cells(cfg):
        if (task, method, seed) in done:
            log(f"[quality] {task}/{method}/seed{seed}: already done")
            continue
        cell = run_cell(cfg, task, method, seed, log)
        cell.update(scale=cfg.scale, command=command)
        with open(_cells_path(cfg), "a") as handle:
            handle.write(json.dumps(cell) + "\n")
        write_report(cfg, command)
    write_report(cfg, command)
    return load_cells(cfg)


# ----- report ------------------------------------------------------------------------------------------------
def _main_metric(task: str, scores: dict) -> tuple[str, float]:
    for key in ("accuracy", "f1", "exact_match"):
        if key in scores:
            return key, scores[key]
    return "response_loss", scores["response_loss"]


def write_report(cfg: QualityConfig, command: str) -> None:
    cells = [c for c in load_cells(cfg) if c.get("scale") == cfg.scale]
    out = Path(cfg.output)
    rows, params = {}, {}
    for c in cells:
        params[c["method"]] = c["params"]
        for t, scores in c["eval"].items():
            setting = "single" if c["task"] != "multitask" else "multitask"
            rows.setdefault((setting, t, c["method"]), []).append(scores)
    # every method with a finished cell (the keys of params), in the order this run names them, then the rest
    methods = [m for m in dict.fromkeys(["base", *cfg.methods, *params]) if m in params]
    planned = set(plan_cells(cfg))
    finished = sum((c["task"], c["method"], c["seed"]) in planned for c in cells)
    commands = Counter(c.get("command", command) for c in cells)
    lines = ["# Quality benchmark: PARA vs baselines on SmolLM2-135M-Instruct", "",
             "Produced by: " + "; ".join(f"`{cmd}` ({n} cells)" for cmd, n in commands.items()) + "  ",
             f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
             f"{torch.get_num_threads()} CPU threads. Cells finished: {finished} of the {len(planned)} that "
             f"`{command}` plans; {len(cells)} in all.", "",
             "Budgets (trainable parameters): " + ", ".join(f"{m} {params[m]:,}" for m in methods if m != "base")
             + ". Every method: same data, seeds, steps, batch size and max length; learning rates are each "
             "method's default in `TrainConfig` (not tuned per task) unless the column names one (`@lr=`).", "",
             "Per task: accuracy (SQuAD: F1 / exact match) on held-out examples, and the mean loss on the gold "
             "response tokens (lower is better). Mean over seeds, with the spread (min-max) when >1 seed.", ""]
    for setting in ("single", "multitask"):
        tasks = sorted({t for (s, t, m) in rows if s == setting})
        if not tasks:
            continue
        title = "Single-task adapters" if setting == "single" else \
            "One adapter per method trained on the union of the tasks (base = zero-shot)"
        lines += [f"## {title}", "", "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        means = {m: [] for m in methods}
        for t in tasks:
            cells_ = []
            for m in methods:
                key = (setting, t, m) if m != "base" else ("single", t, m)
                scores = rows.get(key)
                if not scores:
                    cells_.append("-")
                    continue
                name, _ = _main_metric(t, scores[0])
                values = [_main_metric(t, s)[1] for s in scores]
                losses = [s["response_loss"] for s in scores]
                spread = f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
                extra = f" EM {statistics.mean(s['exact_match'] for s in scores):.3f}" if "exact_match" in scores[0] \
                    and name == "f1" else ""
                cells_.append(f"{name[:3]} {statistics.mean(values):.3f}{spread}{extra} / loss "
                              f"{statistics.mean(losses):.3f}")
                means[m].append(statistics.mean(values))
            lines.append(f"| {t} | " + " | ".join(cells_) + " |")
        lines.append("| **mean** | " + " | ".join(
            f"{statistics.mean(v):.3f}" if len(v) == len(tasks) else "-" for v in means.values()) + " |")
        lines.append("")
    (out / "quality.md").write_text("\n".join(lines))
    (out / "quality.json").write_text(json.dumps({"config": asdict(cfg), "command": command,
                                                  "python": sys.version.split()[0], "cells": cells}, indent=1))
    _bar_chart(rows, methods, out / "quality.png")


def _bar_chart(rows: dict, methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({t for (s, t, m) in rows if s == "single"})
    if not tasks:
        return
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(tasks)), 4))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        values = [statistics.mean(_main_metric(t, s)[1] for s in rows.get(("single", t, m), [])) if rows.get(
            ("single", t, m)) else 0.0 for t in tasks]
        ax.bar([k + i * width for k in range(len(tasks))], values, width, label=m)
    ax.set_xticks([k + width * (len(methods) - 1) / 2 for k in range(len(tasks))], tasks)
    ax.set_ylabel("accuracy (SQuAD: F1)")
    ax.set_title("held-out quality, SmolLM2-135M-Instruct")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
