"""lm-eval task definitions for paratune's built-in tasks, over whichever source holds the data (``sources``).

``render_tasks()`` writes one YAML per task into a folder of the paratune cache and returns it;
``TaskManager(include_path=folder, include_defaults=False)`` then resolves the names in ``TASKS``. The formulation
(context, continuations, metrics) is lm-eval 0.4.13's own and the same for every source; only the dataset part
and the document converter (``process_docs``) depend on where the data is:

| paratune name | lm-eval task | formulation (context -> continuations) | metrics | local file | hub (lm-eval's) |
|---|---|---|---|---|---|
| arc-easy | arc_easy | "Question: {q}\\nAnswer:" -> " {option}" | acc, acc_norm | arc-easy/test.json | allenai/ai2_arc ARC-Easy |
| openbookqa | openbookqa | "{question_stem}" -> " {option}" | acc, acc_norm | openbookqa/test.json | allenai/openbookqa main |
| social_i_qa | social_iqa | "Q: {context} {question}\\nA:" -> " {option}" | acc, acc_norm | social_i_qa/test.json | lighteval/siqa |
| winogrande | winogrande | partial: "{sentence up to _}{option}" -> " {rest}" | acc | winogrande/test.json | allenai/winogrande winogrande_xl |
| copa | copa | "{premise minus '.'} because/therefore" -> " {choice, first letter lowered}" | acc, acc_norm | superglue/COPA/val.jsonl | aps/super_glue copa |
| boolq | boolq | "{passage}\\nQuestion: {question}?\\nAnswer:" -> " no" / " yes" | acc | superglue/BoolQ/val.jsonl | aps/super_glue boolq |
| sst2 | sst2 | "{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:" -> " negative"/" positive" | acc | sst2/glue_dev.tsv | nyu-mll/glue sst2 |
| gsm8k | gsm8k | "Question: {q}\\nAnswer:" generation, 5-shot from train | exact_match (strict / flexible) | gsm8k/*.jsonl | openai/gsm8k main |
| squad | squad | "Title: ..\\n\\nBackground: ..\\n\\nQuestion: ..\\n\\nAnswer:" generation until "\\n" | exact_match, f1 | squad/dev-v1.1.json | rajpurkar/squad plain_text |
| mmlu | mmlu_continuation (57 subjects) | "Question: {q}\\nAnswer:" -> " {option}" (cloze) | acc, acc_norm | mmlu/test/*.csv, dev for few-shot | cais/mmlu |
| bbh | bbh_zeroshot (27 tasks) | "Q: {input}\\nA:" generation | exact_match (strict / flexible) | bbh/bbh/*.json | SaylorTwift/bbh |
| multiple-choice | multiple_choice | "{query}" -> " {choice}" | acc, acc_norm | --data F.jsonl | - |

The LLM-Adapters files (ARC, OpenBookQA, Social IQa, WinoGrande) store each item as an alpaca record; their
``process_docs`` (``task_utils``) recovers question, option texts and gold, and the hub rows are mapped to the same
fields, so both render identically. MMLU's CSVs and SST-2's TSV are converted to JSON Lines in the render folder
(all fields as strings, no CSV type guessing); MMLU and BBH reuse the installed lm-eval YAMLs (descriptions, BBH's
answer-extraction filters), with the data source swapped when it is local.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .multiple_choice import (MULTIPLE_CHOICE, read_multiple_choice, render_multiple_choice,  # noqa: F401
                              write_multiple_choice)
from .sources import EVAL_SPLIT, HUB, LOCAL_FILES, Source, resolve
from .task_yaml import ACC, ACC_NORM, UTILS, dump, fn, json_source, lm_eval_tasks_dir, write_if_changed


@dataclass(frozen=True)
class TaskSpec:
    lm_eval_name: str
    kind: str  # "multiple_choice" | "generate_until"
    group: bool = False


TASKS: dict[str, TaskSpec] = {
    "arc-easy": TaskSpec("arc_easy", "multiple_choice"),
    "openbookqa": TaskSpec("openbookqa", "multiple_choice"),
    "social_i_qa": TaskSpec("social_iqa", "multiple_choice"),
    "winogrande": TaskSpec("winogrande", "multiple_choice"),
    "copa": TaskSpec("copa", "multiple_choice"),
    "boolq": TaskSpec("boolq", "multiple_choice"),
    "sst2": TaskSpec("sst2", "multiple_choice"),
    "gsm8k": TaskSpec("gsm8k", "generate_until"),
    "squad": TaskSpec("squad", "generate_until"),
    "mmlu": TaskSpec("mmlu_continuation", "multiple_choice", group=True),
    "bbh": TaskSpec("bbh_zeroshot", "generate_until", group=True),
    MULTIPLE_CHOICE: TaskSpec("multiple_choice", "multiple_choice"),
}

# The document converter per task and source kind ("local" also serves --data files, which share its format).
_PROCESS_DOCS = {
    "arc-easy": {"local": "process_alpaca_answers", "hub": "process_arc"},
    "openbookqa": {"local": "process_alpaca_answers", "hub": "process_openbookqa"},
    "social_i_qa": {"local": "process_alpaca_answers", "hub": "process_siqa"},
    "winogrande": {"local": "process_winogrande", "hub": None},  # the hub rows already have lm-eval's fields
    "squad": {"local": "process_squad", "hub": "process_squad_rows"},
}

_SQUAD = {"output_type": "generate_until",
          "doc_to_text": "Title: {{title}}\n\nBackground: {{context}}\n\nQuestion: {{question}}\n\nAnswer:",
          "doc_to_target": "{{answers[0]}}", "process_results": fn("squad_process_results"),
          "generation_kwargs": {"until": ["\n"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 32},
          "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
                          {"metric": "f1", "aggregation": "mean", "higher_is_better": True}]}


def _formulation(task: str) -> dict:
    """Context, continuations and metrics of a one-dataset task: independent of where the data is."""
    mc = {"output_type": "multiple_choice", "doc_to_target": "{{gold}}", "doc_to_choice": "{{choices}}"}
    return {
        "arc-easy": lambda: {**mc, "doc_to_text": "Question: {{question}}\nAnswer:", "metric_list": ACC_NORM},
        "openbookqa": lambda: {**mc, "doc_to_text": "{{question}}", "metric_list": ACC_NORM},
        "social_i_qa": lambda: {**mc, "doc_to_text": "Q: {{question}}\nA:", "target_delimiter": " ",
                                "metric_list": ACC_NORM},
        "winogrande": lambda: {"output_type": "multiple_choice", "doc_to_text": fn("winogrande_doc_to_text"),
                               "doc_to_target": fn("winogrande_doc_to_target"),
                               "doc_to_choice": fn("winogrande_doc_to_choice"), "metric_list": ACC},
        "copa": lambda: {"output_type": "multiple_choice", "doc_to_text": fn("copa_doc_to_text"),
                         "doc_to_target": fn("copa_doc_to_target"), "doc_to_choice": fn("copa_doc_to_choice"),
                         "metric_list": ACC_NORM},
        "boolq": lambda: {"output_type": "multiple_choice",
                          "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
                          "doc_to_target": "{{ 1 if label else 0 }}", "doc_to_choice": ["no", "yes"],
                          "metric_list": ACC},
        "sst2": lambda: {"output_type": "multiple_choice",
                         "doc_to_text": "{{sentence}}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                         "doc_to_target": "{{label}}", "doc_to_choice": ["negative", "positive"], "metric_list": ACC},
        "gsm8k": _installed_gsm8k,
        "squad": lambda: dict(_SQUAD),
    }[task]()


def _installed_gsm8k() -> dict:
    config = yaml.safe_load((lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml").read_text())
    for key in ("task", "dataset_path", "dataset_name", "tag", "training_split", "fewshot_split", "test_split"):
        config.pop(key, None)
    return config


def _data_part(source: Source, converted: Path) -> dict:
    """Dataset, splits and document converter of a one-dataset task for ``source``. A --data file is the
    evaluation split alone, and few-shot examples come from it too (never the scored item)."""
    task = source.task
    # A --data file is "test" whatever the task: lm-eval leaves the scored item out of the few-shot examples only
    # when fewshot_split equals test_split.
    evaluated = "test" if source.kind == "file" else EVAL_SPLIT[task]
    if source.kind == "hub":
        path, name = HUB[task]
        part = {"dataset_path": path, "dataset_name": name}
        splits = list(LOCAL_FILES[task])  # the hub data sets use the same split names
    else:
        files = source.files()
        if task == "sst2":
            files = {split: _convert_sst2(tsv, converted) for split, tsv in files.items()}
        part = json_source(files, **({"field": "data"} if task == "squad" else {}))
        splits = list(files)
    if "train" in splits:
        part["training_split"] = "train"
    part[f"{evaluated}_split"] = evaluated
    part["fewshot_split"] = evaluated if source.kind == "file" else ("train" if "train" in splits else None)
    if part["fewshot_split"] is None:
        del part["fewshot_split"]
    process = _PROCESS_DOCS.get(task, {}).get("hub" if source.kind == "hub" else "local")
    if process:
        part["process_docs"] = fn(process)
    return part


# ----- converted sources ---------------------------------------------------------------------------------
def _convert_sst2(tsv: Path, folder: Path) -> Path:
    """GLUE's TSV as JSON Lines (label an int, the sentence as GLUE has it, trailing space kept), named by content."""
    text = tsv.read_text(encoding="utf-8")
    lines = text.splitlines()
    header = lines[0].split("\t")
    s, lab = header.index("sentence"), header.index("label")
    rows = [{"sentence": cols[s], "label": int(cols[lab])}
            for cols in (line.split("\t") for line in lines[1:] if line.strip())]
    out = folder / f"sst2-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    write_if_changed(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


def _convert_mmlu_csv(path: Path, out: Path) -> None:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [{"question": r["question"], "choices": [r[f"choice{i}"] for i in range(4)],
                 "answer": int(r["answer"])} for r in reader]
    write_if_changed(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _render_mmlu(source: Source, out: Path) -> None:
    """lm-eval's mmlu_continuation group; a local copy's CSVs replace cais/mmlu."""
    folder = lm_eval_tasks_dir() / "mmlu" / "continuation"
    template = (folder / "_continuation_template_yaml").read_text()
    if source.kind == "local":
        template = template.replace("dataset_path: cais/mmlu", "dataset_path: json")
    template += "metric_list:\n" + "".join(
        f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in ("acc", "acc_norm"))
    write_if_changed(out / "_continuation_template_yaml", template)
    names = []
    for file in sorted(folder.glob("mmlu_*.yaml")):
        config = yaml.safe_load(file.read_text())
        config.pop("tag", None)
        if source.kind == "local":
            subject = config.pop("dataset_name")
            splits = {}
            for split in ("test", "dev"):
                splits[split] = out / "data" / f"{subject}_{split}.jsonl"
                _convert_mmlu_csv(source.path / "mmlu" / split / f"{subject}_{split}.csv", splits[split])
            config.update(json_source(splits))
        write_if_changed(out / file.name, dump(config))
        names.append(config["task"])
    group = {"group": "mmlu_continuation", "group_alias": "mmlu (continuation)", "task": names,
             "aggregate_metric_list": [{"metric": m, "weight_by_size": True} for m in ("acc", "acc_norm")],
             "metadata": {"version": 2}}
    write_if_changed(out / "_mmlu_continuation.yaml", dump(group))


def _render_bbh(source: Source, out: Path) -> None:
    """lm-eval's bbh_zeroshot group; a local copy's JSON files replace SaylorTwift/bbh."""
    folder = lm_eval_tasks_dir() / "bbh" / "zeroshot"
    template = (folder / "_zeroshot_template_yaml").read_text()
    if source.kind == "local":
        template = template.replace("dataset_path: SaylorTwift/bbh", "dataset_path: json")
    write_if_changed(out / "_zeroshot_template_yaml", template)
    write_if_changed(out / "utils.py", (folder / "utils.py").read_text())
    write_if_changed(out / "_bbh_zeroshot.yaml", (folder / "_bbh_zeroshot.yaml").read_text())
    for file in sorted(folder.glob("*.yaml")):
        if file.name.startswith("_"):
            continue
        text = file.read_text()
        if source.kind == "local":
            m = re.search(r'^"dataset_name": "([a-z_]+)"\n', text, flags=re.M)
            if not m:
                raise ValueError(f"unexpected lm-eval BBH task file {file}")
            data = json_source({"test": source.path / "bbh" / "bbh" / f"{m.group(1)}.json"}, field="examples")
            text = text[: m.start()] + dump(data) + text[m.end():]
        write_if_changed(out / file.name, text)


def render_squad_file(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """lm-eval's ``squad`` task (the same prompt, generation and metrics as the built-in one) over the SQuAD
    documents of a JSONL file (one ``{"id", "title", "context", "question", "answers"}`` object per line, as
    ``process_squad`` yields them), written into ``out`` (a folder of its own, with the ``utils.py`` its
    metric needs). Returns the YAML path. Used by ``paratune bench quality`` to score a held-out subset."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_if_changed(out / "utils.py", UTILS)
    config = {"task": TASKS["squad"].lm_eval_name, **_formulation("squad"),
              **json_source({"validation": Path(path)}), "validation_split": "validation",
              "metadata": {"version": 1.0, "source": str(Path(path).resolve())}}
    target = out / "squad.yaml"
    write_if_changed(target, dump(config))
    return target


# ----- rendering -----------------------------------------------------------------------------------------
def render_tasks(names: list[str] | None = None, data_dir: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 multiple_choice_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the YAMLs of ``names`` (paratune task names; default all but multiple-choice) and return the
    folders to pass to ``TaskManager(include_path=...)``. Each built-in task reads ``data`` (a file; one task
    only), else the local copy (``data_dir``, else $PARATUNE_DATA), else lm-eval's hub data set (``sources``);
    its YAML goes to ``out`` (default: a folder of the paratune cache keyed by the sources). Multiple-choice
    (``data`` = its JSONL file) goes to ``multiple_choice_dir`` (default: a new temporary folder)."""
    import tempfile

    from ..models import cache_dir

    names = list(names) if names is not None else [n for n in TASKS if n != MULTIPLE_CHOICE]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose one of: {', '.join(TASKS)}")
    if data is not None and len(names) != 1:
        raise ValueError(f"data (one file) is for one task at a time, got tasks {names}")
    sources = {n: resolve(n, data_dir, data) for n in names if n != MULTIPLE_CHOICE}
    if out is None:
        key = json.dumps(sorted((n, s.kind, str(s.path and s.path.resolve())) for n, s in sources.items()))
        out = cache_dir() / "lm_eval_tasks" / hashlib.sha256(key.encode()).hexdigest()[:12]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_if_changed(out / "utils.py", UTILS)
    folders = [out]
    for name in names:
        if name == MULTIPLE_CHOICE:
            if data is None:
                raise ValueError("--task multiple-choice needs --data FILE (JSONL lines with query, choices, gold)")
            mc_dir = Path(multiple_choice_dir or tempfile.mkdtemp(prefix="paratune-mc-"))
            mc_dir.mkdir(parents=True, exist_ok=True)
            render_multiple_choice(data, out / "data", mc_dir)
            folders.append(mc_dir)
        elif name == "mmlu":
            _render_mmlu(sources[name], out / "mmlu")
        elif name == "bbh":
            _render_bbh(sources[name], out / "bbh")
        else:
            config = {"task": TASKS[name].lm_eval_name, **_formulation(name), **_data_part(sources[name], out / "data")}
            config.setdefault("metadata", {"version": 1.0})
            write_if_changed(out / f"{TASKS[name].lm_eval_name}.yaml", dump(config))
    return folders


def export_multiple_choice(task: str, path: str | os.PathLike, limit: int | None = None,
                           data_dir: str | os.PathLike | None = None, split: str | None = None) -> Path:
    """Write the items of a built-in multiple-choice task as a multiple-choice file: ``query`` = lm-eval's
    rendered context, ``choices`` = its options, ``gold`` = its target index, first ``limit`` items of its
    evaluation split (or ``split``) in order. Scoring the file with ``--task multiple-choice`` sends lm-eval the
    same requests as the built-in task, so the numbers are the same; training on an exported train split uses
    the same rendering. Tasks scored with another target delimiter than " ", or by partial scoring
    (WinoGrande), have no such file and raise ValueError."""
    from lm_eval.tasks import TaskManager, get_task_dict

    spec = TASKS.get(task)
    if spec is None or spec.kind != "multiple_choice" or spec.group or task == MULTIPLE_CHOICE:
        raise ValueError(f"{task!r} is not a built-in multiple-choice task")
    folders = render_tasks([task], data_dir=data_dir)
    obj = get_task_dict([spec.lm_eval_name], TaskManager(include_path=[str(f) for f in folders],
                                                           include_defaults=False))[spec.lm_eval_name]
    if obj.multiple_input:
        raise ValueError(f"{task!r} is scored by partial scoring (the options are in the context); "
                         "a multiple-choice file cannot express it")
    if obj.config.target_delimiter != " ":
        raise ValueError(f"{task!r} uses target delimiter {obj.config.target_delimiter!r}, not ' '")
    docs = {"test": obj.test_docs, "validation": obj.validation_docs, "train": obj.training_docs}
    if split is not None:
        if split not in docs or not getattr(obj, f"has_{'training' if split == 'train' else split}_docs")():
            raise ValueError(f"{task!r} has no {split!r} split")
        chosen = docs[split]()
    else:
        chosen = obj.eval_docs
    items = []
    for doc in chosen:
        if limit is not None and len(items) >= limit:
            break
        choices = obj.doc_to_choice(doc)
        gold = obj.doc_to_target(doc)
        gold = choices.index(gold) if isinstance(gold, str) else int(gold)
        items.append({"query": obj.doc_to_text(doc), "choices": list(choices), "gold": gold})
    return write_multiple_choice(items, path)
