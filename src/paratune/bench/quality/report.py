"""quality.md / quality.json / quality.png from the protocol's records (rebuilt from runs.jsonl at any time)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from .data import MAIN_METRIC
from .methods import ABLATIONS, VARIANTS, lr_grid, lr_key
from .protocol import MULTITASK, Protocol, QualityConfig, config_dict
from .stats import paired_bootstrap, seed_mean

# PARA against each other method; a reference (one seed) enters with its one seed, PARA with the mean of its seeds.
COMPARISONS = (("para", "lora"), ("para", "lora-all"), ("para", "ia3"), ("para", "prompt-tuning"))


def _versions() -> dict:
    import lm_eval
    import peft
    import torch
    import transformers

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "lm_eval": getattr(lm_eval, "__version__", "?"),
            "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine()}


def collect(protocol: Protocol) -> dict:
    """Everything the report shows, as plain data (also the JSON)."""
    cfg = protocol.cfg
    store = protocol.store
    tasks = list(cfg.tasks)
    groups = [(t, m) for t, m, ablation in protocol.groups() if not ablation]
    params = {r["method"]: r["params"] for r in store.records.values() if r["kind"] == "train"}
    grid, chosen, test = {}, {}, {}
    for task, method in groups:
        rates = sorted({r["lr_value"] for r in store.records.values() if r["kind"] == "train"
                        and r["task"] == task and r["method"] == method and r["seed"] == 0}
                       | set(lr_grid(method)))
        grid[f"{task}/{method}"] = {lr_key(lr): protocol._stored_val(task, method, lr) for lr in rates}
        lr = protocol.chosen_lr(task, method)
        if lr is None:
            continue
        chosen[f"{task}/{method}"] = lr_key(lr)
        for seed in range(protocol.seeds(method)):
            for t in protocol.member_tasks(task):
                record = store.get("score", task, method, lr, seed, f"test:{t}")
                if record is not None:
                    test.setdefault(f"{task}/{method}", {}).setdefault(t, []).append(
                        {"seed": seed, **{k: record[k] for k in record if k in ("acc", "acc_norm", "f1",
                                                                                  "exact_match")},
                         "items": record["items"][MAIN_METRIC[t]]})
    base = {t: store.get("score", t, "base", None, 0, f"test:{t}") for t in tasks}
    base = {t: r[MAIN_METRIC[t]] for t, r in base.items() if r is not None}
    ablations = {}
    for task, name, is_ablation in protocol.groups():
        if not is_ablation:
            continue
        lr = protocol.chosen_lr(task, "para")
        if lr is None:
            continue
        row = {}
        for variant in ("para", name):
            for split in ("val", "test"):
                r = store.get("score", task, variant, lr, 0, f"{split}:{task}")
                row[f"{variant}:{split}"] = None if r is None else r[MAIN_METRIC[task]]
        row["params"] = params.get(name)
        ablations[f"{task}/{name}"] = row
    variants = {}
    for task in [t for t in cfg.variant_tasks if t in cfg.tasks]:
        for name in cfg.variants:
            row = {"params": params.get(name), "lr": chosen.get(f"{task}/{name}"), "vs": {}}
            x = _per_item(test, task, name, task, cfg.seeds)
            for other in ("para", "lora"):
                y = _per_item(test, task, other, task, cfg.seeds)
                if x is not None and y is not None:
                    row["vs"][other] = paired_bootstrap({task: x}, {task: y})["tasks"][task]
            variants[f"{task}/{name}"] = row
    return {"config": config_dict(cfg), "params": params, "grid": grid, "chosen_lr": chosen, "test": test,
            "seeds": {m: protocol.seeds(m) for m in cfg.methods},
            "base": base, "ablations": ablations, "variants": variants,
            "comparisons": _comparisons(test, cfg, protocol.seeds),
            "versions": _versions()}


def _per_item(test: dict, task: str, method: str, eval_task: str, seeds: int) -> np.ndarray | None:
    runs = test.get(f"{task}/{method}", {}).get(eval_task, [])
    if len(runs) < seeds:
        return None
    return seed_mean([r["items"] for r in runs])


def _comparisons(test: dict, cfg: QualityConfig, seeds) -> dict:
    """Paired bootstraps of COMPARISONS; ``seeds(method)``: how many seeds a method's mean needs."""
    out = {}
    settings = [("single", None)] + ([("multitask", MULTITASK)] if cfg.multitask else [])
    if cfg.seeds < 1:
        return out
    for a, b in COMPARISONS:
        for setting, group in settings:
            xs, ys = {}, {}
            for t in cfg.tasks:
                x = _per_item(test, group or t, a, t, seeds(a))
                y = _per_item(test, group or t, b, t, seeds(b))
                if x is not None and y is not None:
                    xs[t], ys[t] = x, y
            if xs:
                result = paired_bootstrap(xs, ys)
                result["complete"] = len(xs) == len(cfg.tasks)
                out[f"{a}-{b}/{setting}"] = result
    return out


def _cell(runs: list[dict] | None, metric: str, seeds: int) -> str:
    """mean ± sd over seeds; a partial count while seeds are missing."""
    if not runs:
        return "-"
    values = [100 * r[metric] for r in runs]
    mean = statistics.mean(values)
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    each = f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else ""
    partial = "" if len(values) >= seeds else f" [{len(values)}/{seeds} seeds]"
    return f"{mean:.1f}{spread}{each}{partial}"


def markdown(data: dict, command: str) -> str:
    cfg = data["config"]
    tasks = cfg["tasks"]
    methods = cfg["methods"]
    v = data["versions"]
    lines = ["# Quality: PARA vs LoRA, (IA)^3 and prompt tuning on SmolLM2-135M-Instruct (fair protocol)", "",
             f"Produced by `{command}` (resumable; records in `runs.jsonl`).  ",
             f"python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, peft {v['peft']}, "
             f"lm-eval {v['lm_eval']}; {v['threads']} CPU threads ({v['machine']}). Scale {cfg['scale']}.", "",
             "Protocol (`paratune/bench/quality/protocol.py`): each method's learning rate is chosen from its grid on "
             "a validation split carved from the training data (seed 0; main metric; ties to the smaller rate; one "
             "extra rate beyond an end of the grid when the best is at that end), then "
             f"{cfg['seeds']} seeds at that rate (references " + ", ".join(cfg["reference_methods"]) + ": one seed) are "
             "scored on the test split, which nothing sees before. Every "
             f"method: the same training records, {cfg['epochs']:g} epoch at batch {cfg['batch_size']}, the same "
             "validation and test items, lm-eval 0-shot scoring (`multiple_choice` with the tasks' own rendering; "
             "SQuAD by generation). Main metrics: " + ", ".join(f"{t} {MAIN_METRIC[t]}" for t in tasks) + ".", "",
             "Trainable parameters: " + ", ".join(f"{m} {data['params'][m]:,}" for m in methods
                                                  if m in data["params"]) + ".", ""]
    # test results
    for setting in ("single", "multitask"):
        if setting == "multitask" and not cfg["multitask"]:
            continue
        title = ("## Test scores, one adapter per task (mean ± sd over seeds, then each seed; x100)" if setting == "single" else
                 "## Test scores, one adapter per method on the union of the tasks (x100)")
        cols = methods if setting == "single" else [m for m in methods if m in cfg["multitask_methods"]]
        lines += [title, "", "| task | base (0-shot) | " + " | ".join(cols) + " |",
                  "|---|---|" + "---|" * len(cols)]
        for t in tasks:
            group = t if setting == "single" else MULTITASK
            base = data["base"].get(t)
            row = [f"{100 * base:.1f}" if base is not None else "-"]
            for m in cols:
                row.append(_cell(data["test"].get(f"{group}/{m}", {}).get(t), MAIN_METRIC[t], data["seeds"][m]))
            lines.append(f"| {t} ({MAIN_METRIC[t]}) | " + " | ".join(row) + " |")
        lines.append("")
    # comparisons
    if data["comparisons"]:
        lines += ["## Paired differences (points, 95% paired bootstrap CI over test items; seed-averaged scores, "
                  "a reference's one seed)", "",
                  "| comparison | " + " | ".join(tasks) + " | mean over tasks |", "|---|" + "---|" * (len(tasks) + 1)]
        for name, result in data["comparisons"].items():
            cells = []
            for t in tasks:
                r = result["tasks"].get(t)
                cells.append("-" if r is None else f"{100 * r['diff']:+.1f} [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]")
            m = result.get("mean")
            mean = "-" if not m or not result["complete"] else \
                f"**{100 * m['diff']:+.1f} [{100 * m['lo']:+.1f}, {100 * m['hi']:+.1f}]**"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
        lines.append("")
    # chosen rates and the grid
    lines += ["## Learning-rate selection (validation main metric x100, seed 0; chosen in bold)", "",
              "| task / method | " + " | ".join(["rates"]) + " |", "|---|---|"]
    for key, values in data["grid"].items():
        chosen = data["chosen_lr"].get(key)
        parts = []
        for lr, value in values.items():
            text = f"{lr}: {'…' if value is None else f'{100 * value:.1f}'}"
            parts.append(f"**{text}**" if lr == chosen else text)
        lines.append(f"| {key} | " + ", ".join(parts) + " |")
    lines.append("")
    if data.get("variants"):
        lines += ["## PARA's element-wise variants, full protocol (own rate on validation, all seeds; x100)", "",
                  "| task / variant | setting | params | chosen lr | test | minus para, 95% CI | minus lora, 95% CI |",
                  "|---|---|---|---|---|---|---|"]
        for key, row in data["variants"].items():
            task, name = key.split("/")
            setting = ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
            cell = _cell(data["test"].get(key, {}).get(task), MAIN_METRIC[task], cfg["seeds"])
            vs = [("-" if (r := row["vs"].get(o)) is None else
                   f"{100 * r['diff']:+.1f} [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]") for o in ("para", "lora")]
            lines.append(f"| {key} | {setting} | {row['params'] or '-'} | {row['lr'] or '-'} | {cell} | "
                         + " | ".join(vs) + " |")
        lines.append("")
    if data["ablations"]:
        lines += ["## PARA ablations (seed 0, at PARA's chosen rate; x100)", "",
                  "| task / variant | setting | params | val | test | test vs para |", "|---|---|---|---|---|---|"]
        for key, row in data["ablations"].items():
            task, name = key.split("/")
            setting = ", ".join(f"{k}={v}" for k, v in ABLATIONS[name].items())
            fmt = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
            delta = "-" if row[f"{name}:test"] is None or row["para:test"] is None else \
                f"{100 * (row[f'{name}:test'] - row['para:test']):+.1f}"
            lines.append(f"| {key} | {setting} | {row['params'] or '-'} | {fmt(row[f'{name}:val'])} "
                         f"(para {fmt(row['para:val'])}) | {fmt(row[f'{name}:test'])} (para {fmt(row['para:test'])})"
                         f" | {delta} |")
        lines.append("")
    return "\n".join(lines)


def chart(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = data["config"]
    tasks, methods = cfg["tasks"], cfg["methods"]
    panels = [("single-task adapters", None, methods)]
    union = [m for m in methods if m in cfg["multitask_methods"]]
    if cfg["multitask"] and any(f"{MULTITASK}/{m}" in data["test"] for m in union):
        panels.append(("one adapter on the union of the tasks", MULTITASK, union))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7, 2.0 * len(tasks)), 4 * len(panels)), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}  # a method keeps its colour in both panels
    xs = np.arange(len(tasks))
    for ax, (title, group, shown) in zip(axes[:, 0], panels):
        width = 0.8 / (len(shown) + 1)
        ax.bar(xs, [100 * data["base"].get(t, 0) for t in tasks], width, label="base (0-shot)", color="#bbbbbb")
        for i, m in enumerate(shown, start=1):
            means, errs = [], []
            for t in tasks:
                runs = data["test"].get(f"{group or t}/{m}", {}).get(t, [])
                values = [100 * r[MAIN_METRIC[t]] for r in runs]
                means.append(statistics.mean(values) if values else 0)
                errs.append(statistics.stdev(values) if len(values) > 1 else 0)
            one_seed = m in cfg["reference_methods"]
            ax.bar(xs + i * width, means, width, yerr=None if one_seed else errs, capsize=2, color=colours[m],
                   label=f"{m} (1 seed)" if one_seed else m)
        ax.set_xticks(xs + width * len(shown) / 2, [f"{t}\n({MAIN_METRIC[t]})" for t in tasks])
        ax.set_ylabel("test score x100 (mean ± sd over seeds)")
        ax.set_title(f"{title}, SmolLM2-135M-Instruct, lr chosen on validation")
        ax.legend(fontsize=7, ncol=3)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(protocol: Protocol, command: str) -> Path:
    data = collect(protocol)
    data["command"] = command
    out = Path(protocol.cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(markdown(data, command) + "\n", encoding="utf-8")
    slim = {k: v for k, v in data.items() if k != "test"}
    slim["test"] = {key: {t: [{k: r[k] for k in r if k != "items"} for r in runs] for t, runs in value.items()}
                    for key, value in data["test"].items()}
    (out / "quality.json").write_text(json.dumps(slim, indent=1, default=str), encoding="utf-8")
    chart(data, out / "quality.png")
    return out / "quality.md"
