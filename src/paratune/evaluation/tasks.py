"""Local lm-eval task definitions for the data sets in ``../shared/data`` (no hub access).

``render_tasks()`` writes one YAML per task (``dataset_path: json`` + ``data_files`` pointing at the local files)
into a folder of the paratune cache and returns it; ``TaskManager(include_path=folder, include_defaults=False)``
then resolves the names in ``TASKS``. The formulations are lm-eval's own (0.4.13), per task:

| paratune name | lm-eval task | formulation (context -> continuations) | metrics | data |
|---|---|---|---|---|
| arc-easy | arc_easy | "Question: {q}\\nAnswer:" -> " {option}" | acc, acc_norm | arc-easy/test.json (2,376) |
| openbookqa | openbookqa | "{question_stem}" -> " {option}" | acc, acc_norm | openbookqa/test.json (500) |
| social_i_qa | social_iqa | "Q: {context} {question}\\nA:" -> " {option}" | acc, acc_norm | social_i_qa/test.json (1,954 = validation) |
| winogrande | winogrande | partial: "{sentence up to _}{option}" -> " {rest}" | acc | winogrande/test.json (1,267 = dev) |
| copa | copa | "{premise minus '.'} because/therefore" -> " {choice, first letter lowered}" | acc, acc_norm | superglue/COPA/val.jsonl (100) |
| boolq | boolq | "{passage}\\nQuestion: {question}?\\nAnswer:" -> " no" / " yes" | acc | superglue/BoolQ/val.jsonl (3,270) |
| sst2 | sst2 | "{sentence}\\nQuestion: Is this sentence positive or negative?\\nAnswer:" -> " negative"/" positive" | acc | sst2/glue_dev.tsv (872) |
| gsm8k | gsm8k | "Question: {q}\\nAnswer:" generation, 5-shot from train | exact_match (strict / flexible) | gsm8k/*.jsonl |
| squad | squad | "Title: ..\\n\\nBackground: ..\\n\\nQuestion: ..\\n\\nAnswer:" generation until "\\n" | exact_match, f1 | squad/dev-v1.1.json |
| mmlu | mmlu_continuation (57 subjects) | "Question: {q}\\nAnswer:" -> " {option}" (cloze) | acc, acc_norm | mmlu/test/*.csv, dev for few-shot |
| bbh | bbh_zeroshot (27 tasks) | "Q: {input}\\nA:" generation | exact_match (strict / flexible) | bbh/bbh/*.json |
| multiple-choice | multiple_choice | "{query}" -> " {choice}" | acc, acc_norm | --data F.jsonl |

The LLM-Adapters files (ARC, OpenBookQA, Social IQa, WinoGrande) store each item as an alpaca record; their
``process_docs`` (``task_utils``) recovers question, option texts and gold. MMLU's CSVs and SST-2's TSV are
converted to JSON Lines in the render folder (all fields as strings, no CSV type guessing); MMLU and BBH reuse
the installed lm-eval YAMLs (descriptions, BBH's answer-extraction filters) with the data source swapped.
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

from .data import data_root

UTILS = "from paratune.evaluation.task_utils import *  # noqa: F401,F403\n"
MULTIPLE_CHOICE = "multiple-choice"


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


class _Function(str):
    """A YAML ``!function`` value."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda dumper, value: dumper.represent_scalar("!function", str(value)))


def _fn(name: str) -> _Function:
    return _Function(f"utils.{name}")


def _dump(config: dict) -> str:
    return yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]
ACC_NORM = ACC + [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def _json_source(files: dict[str, Path], **extra) -> dict:
    for path in files.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"data file not found: {path} (set PARATUNE_DATA to the shared data folder)")
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}, **extra}}


def _simple_task(name: str, root: Path, converted: Path) -> dict:
    mc = {"output_type": "multiple_choice", "doc_to_target": "{{gold}}", "doc_to_choice": "{{choices}}"}
    builders = {
        "arc_easy": lambda: {**_json_source({"train": root / "arc-easy/train.json", "test": root / "arc-easy/test.json"}),
                     **mc, "training_split": "train", "test_split": "test",
                     "process_docs": _fn("process_alpaca_answers"),
                     "doc_to_text": "Question: {{question}}\nAnswer:", "metric_list": ACC_NORM},
        "openbookqa": lambda: {**_json_source({"train": root / "openbookqa/train.json",
                                       "test": root / "openbookqa/test.json"}),
                       **mc, "training_split": "train", "test_split": "test",
                       "process_docs": _fn("process_alpaca_answers"), "doc_to_text": "{{question}}",
                       "metric_list": ACC_NORM},
        "social_iqa": lambda: {**_json_source({"validation": root / "social_i_qa/test.json"}), **mc,
                       "validation_split": "validation", "process_docs": _fn("process_alpaca_answers"),
                       "doc_to_text": "Q: {{question}}\nA:", "target_delimiter": " ", "metric_list": ACC_NORM},
        "winogrande": lambda: {**_json_source({"validation": root / "winogrande/test.json"}),
                       "output_type": "multiple_choice", "validation_split": "validation",
                       "process_docs": _fn("process_winogrande"), "doc_to_text": _fn("winogrande_doc_to_text"),
                       "doc_to_target": _fn("winogrande_doc_to_target"),
                       "doc_to_choice": _fn("winogrande_doc_to_choice"), "metric_list": ACC},
        "copa": lambda: {**_json_source({"train": root / "superglue/COPA/fewglue_train32.jsonl",
                                 "validation": root / "superglue/COPA/val.jsonl"}),
                 "output_type": "multiple_choice", "training_split": "train", "validation_split": "validation",
                 "doc_to_text": _fn("copa_doc_to_text"), "doc_to_target": _fn("copa_doc_to_target"),
                 "doc_to_choice": _fn("copa_doc_to_choice"), "metric_list": ACC_NORM},
        "boolq": lambda: {**_json_source({"validation": root / "superglue/BoolQ/val.jsonl"}),
                  "output_type": "multiple_choice", "validation_split": "validation",
                  "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
                  "doc_to_target": "{{ 1 if label else 0 }}", "doc_to_choice": ["no", "yes"], "metric_list": ACC},
        "sst2": lambda: {**_json_source({"validation": converted / "sst2_glue_dev.jsonl"}),
                 "output_type": "multiple_choice", "validation_split": "validation",
                 "doc_to_text": "{{sentence}}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                 "doc_to_target": "{{label}}", "doc_to_choice": ["negative", "positive"], "metric_list": ACC},
        "gsm8k": lambda: {**_json_source({"train": root / "gsm8k/train.jsonl", "test": root / "gsm8k/test.jsonl"}),
                  **_installed_gsm8k()},
        "squad": lambda: {**_json_source({"validation": root / "squad/dev-v1.1.json"}, field="data"),
                  "output_type": "generate_until", "validation_split": "validation",
                  "process_docs": _fn("process_squad"),
                  "doc_to_text": "Title: {{title}}\n\nBackground: {{context}}\n\nQuestion: {{question}}\n\nAnswer:",
                  "doc_to_target": "{{answers[0]}}", "process_results": _fn("squad_process_results"),
                  "generation_kwargs": {"until": ["\n"], "do_sample": False, "temperature": 0.0,
                                        "max_gen_toks": 32},
                  "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
                                  {"metric": "f1", "aggregation": "mean", "higher_is_better": True}]},
    }
    return builders[name]()


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _installed_gsm8k() -> dict:
    config = yaml.safe_load((_lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml").read_text())
    for key in ("task", "dataset_path", "dataset_name", "tag"):
        config.pop(key, None)
    return config


# ----- converted sources ---------------------------------------------------------------------------------
def _convert_sst2(tsv: Path, out: Path) -> None:
    lines = tsv.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    s, lab = header.index("sentence"), header.index("label")
    rows = [{"sentence": cols[s], "label": int(cols[lab])}  # as GLUE has it (trailing space kept)
            for cols in (line.split("\t") for line in lines[1:] if line.strip())]
    _write_if_changed(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _convert_mmlu_csv(path: Path, out: Path) -> None:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [{"question": r["question"], "choices": [r[f"choice{i}"] for i in range(4)],
                 "answer": int(r["answer"])} for r in reader]
    _write_if_changed(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic, and untouched when equal (datasets' cache keys on the files, so unchanged files stay cached)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _render_mmlu(root: Path, out: Path) -> None:
    source = _lm_eval_tasks_dir() / "mmlu" / "continuation"
    template = (source / "_continuation_template_yaml").read_text()
    template = template.replace("dataset_path: cais/mmlu", "dataset_path: json")
    template += "metric_list:\n" + "".join(
        f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true\n" for m in ("acc", "acc_norm"))
    _write_if_changed(out / "_continuation_template_yaml", template)
    names = []
    for file in sorted(source.glob("mmlu_*.yaml")):
        config = yaml.safe_load(file.read_text())
        subject = config.pop("dataset_name")
        splits = {}
        for split in ("test", "dev"):
            csv_path = root / "mmlu" / split / f"{subject}_{split}.csv"
            if not csv_path.is_file():
                raise FileNotFoundError(f"MMLU file not found: {csv_path}")
            converted = out / "data" / f"{subject}_{split}.jsonl"
            _convert_mmlu_csv(csv_path, converted)
            splits[split] = converted
        config.pop("tag", None)
        config.update(_json_source(splits))
        _write_if_changed(out / file.name, _dump(config))
        names.append(config["task"])
    group = {"group": "mmlu_continuation", "group_alias": "mmlu (continuation)", "task": names,
             "aggregate_metric_list": [{"metric": m, "weight_by_size": True} for m in ("acc", "acc_norm")],
             "metadata": {"version": 2}}
    _write_if_changed(out / "_mmlu_continuation.yaml", _dump(group))


def _render_bbh(root: Path, out: Path) -> None:
    source = _lm_eval_tasks_dir() / "bbh" / "zeroshot"
    template = (source / "_zeroshot_template_yaml").read_text()
    template = template.replace("dataset_path: SaylorTwift/bbh", "dataset_path: json")
    _write_if_changed(out / "_zeroshot_template_yaml", template)
    _write_if_changed(out / "utils.py", (source / "utils.py").read_text())
    _write_if_changed(out / "_bbh_zeroshot.yaml", (source / "_bbh_zeroshot.yaml").read_text())
    for file in sorted(source.glob("*.yaml")):
        if file.name.startswith("_"):
            continue
        text = file.read_text()
        m = re.search(r'^"dataset_name": "([a-z_]+)"\n', text, flags=re.M)
        if not m:
            raise ValueError(f"unexpected lm-eval BBH task file {file}")
        data = root / "bbh" / "bbh" / f"{m.group(1)}.json"
        if not data.is_file():
            raise FileNotFoundError(f"BBH file not found: {data}")
        source_yaml = _dump(_json_source({"test": data}, field="examples"))
        _write_if_changed(out / file.name, text[: m.start()] + source_yaml + text[m.end():])


# ----- the generic multiple-choice file ------------------------------------------------------------------
def read_multiple_choice(path: str | os.PathLike) -> list[dict]:
    """Validated ``{"query", "choices", "gold"}`` items of a JSONL file, in file order (blank lines skipped);
    an invalid line raises ValueError naming the file, the line and the field."""
    from ..jsonl import read_jsonl

    items = []
    for where, record in read_jsonl(path):
        query = record.get("query")
        if not isinstance(query, str) or not query:
            raise ValueError(f"{where}: field 'query' must be a non-empty string, got {query!r}")
        choices = record.get("choices")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)):
            raise ValueError(f"{where}: field 'choices' must be a list of at least 2 non-empty strings, "
                             f"got {choices!r}")
        gold = record.get("gold")
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise ValueError(f"{where}: field 'gold' must be an integer index into 'choices' "
                             f"(0..{len(choices) - 1}), got {gold!r}")
        items.append({"query": query, "choices": choices, "gold": gold})
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def render_multiple_choice(path: str | os.PathLike, data_dir: Path, out: Path) -> Path:
    """The ``multiple_choice`` task over ``path``: the validated items are copied, in file order, to a file
    named by their hash under ``data_dir`` and the YAML is written into ``out`` (a folder of its own: lm-eval
    indexes every YAML under an include path). Returns the YAML path."""
    items = read_multiple_choice(path)
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    data = data_dir / f"multiple_choice-{hashlib.sha256(text.encode()).hexdigest()[:16]}.jsonl"
    _write_if_changed(data, text)
    config = {"task": "multiple_choice", **_json_source({"test": data}), "output_type": "multiple_choice",
              "test_split": "test", "doc_to_text": "{{query}}", "doc_to_choice": "{{choices}}",
              "doc_to_target": "{{gold}}", "target_delimiter": " ", "metric_list": ACC_NORM,
              "metadata": {"version": 1.0, "source": str(Path(path).resolve())}}
    target = Path(out) / "multiple_choice.yaml"
    _write_if_changed(target, _dump(config))
    return target


def write_multiple_choice(items: list[dict], path: str | os.PathLike) -> Path:
    """Write ``{"query", "choices", "gold"}`` items as the JSONL the multiple-choice task reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: item[k] for k in ("query", "choices", "gold")}, ensure_ascii=False)
                            + "\n" for item in items), encoding="utf-8")
    return path


def render_squad_file(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """lm-eval's ``squad`` task (the same prompt, generation and metrics as the built-in one) over the SQuAD
    documents of a JSONL file (one ``{"id", "title", "context", "question", "answers"}`` object per line, as
    ``process_squad`` yields them), written into ``out`` (a folder of its own, with the ``utils.py`` its
    metric needs). Returns the YAML path. Used by ``paratune bench quality`` to score a held-out subset."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out / "utils.py", UTILS)
    config = {"task": TASKS["squad"].lm_eval_name, **_simple_task("squad", data_root(), out)}
    config.update(_json_source({"validation": Path(path)}))
    config.pop("process_docs")
    config["metadata"] = {"version": 1.0, "source": str(Path(path).resolve())}
    target = out / "squad.yaml"
    _write_if_changed(target, _dump(config))
    return target


# ----- rendering -----------------------------------------------------------------------------------------
def render_tasks(names: list[str] | None = None, root: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 multiple_choice_dir: str | os.PathLike | None = None) -> list[Path]:
    """Write the YAMLs of ``names`` (paratune task names; default all but multiple-choice) and return the
    folders to pass to ``TaskManager(include_path=...)``. The built-in tasks go to ``out`` (default: a folder of
    the paratune cache keyed by the data root); multiple-choice (``data`` = its JSONL file) to
    ``multiple_choice_dir`` (default: a new temporary folder)."""
    import tempfile

    from ..models import cache_dir

    root = Path(root) if root is not None else data_root()
    names = list(names) if names is not None else [n for n in TASKS if n != MULTIPLE_CHOICE]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose one of: {', '.join(TASKS)}")
    if out is None:
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
        out = cache_dir() / "lm_eval_tasks" / key
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_if_changed(out / "utils.py", UTILS)
    folders = [out]
    for name in names:
        spec = TASKS[name]
        if name == MULTIPLE_CHOICE:
            if data is None:
                raise ValueError("--task multiple-choice needs --data FILE (JSONL lines with query, choices, gold)")
            mc_dir = Path(multiple_choice_dir or tempfile.mkdtemp(prefix="paratune-mc-"))
            mc_dir.mkdir(parents=True, exist_ok=True)
            render_multiple_choice(data, out / "data", mc_dir)
            folders.append(mc_dir)
        elif name == "mmlu":
            _render_mmlu(root, out / "mmlu")
        elif name == "bbh":
            _render_bbh(root, out / "bbh")
        else:
            if name == "sst2":
                _convert_sst2(root / "sst2" / "glue_dev.tsv", out / "data" / "sst2_glue_dev.jsonl")
            config = {"task": spec.lm_eval_name, **_simple_task(spec.lm_eval_name, root, out / "data")}
            config.setdefault("metadata", {"version": 1.0})
            _write_if_changed(out / f"{spec.lm_eval_name}.yaml", _dump(config))
    return folders


def export_multiple_choice(task: str, path: str | os.PathLike, limit: int | None = None,
                           root: str | os.PathLike | None = None, split: str | None = None) -> Path:
    """Write the items of a built-in multiple-choice task as a multiple-choice file: ``query`` = lm-eval's
    rendered context, ``choices`` = its options, ``gold`` = its target index, first ``limit`` items of its
    evaluation split (or ``split``) in order. Scoring the file with ``--task multiple-choice`` sends lm-eval the
    same requests as the built-in task, so the numbers are the same; training on an exported train split uses
    the same rendering. Tasks scored with another target delimiter than " ", or by partial scoring
    (WinoGrande), have no such file and raise ValueError."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from .run import offline

    offline()
    spec = TASKS.get(task)
    if spec is None or spec.kind != "multiple_choice" or spec.group or task == MULTIPLE_CHOICE:
        raise ValueError(f"{task!r} is not a built-in multiple-choice task")
    folders = render_tasks([task], root=root)
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
