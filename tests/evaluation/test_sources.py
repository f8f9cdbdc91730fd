"""Where a built-in task's data comes from: --data FILE, the local copy, or lm-eval's own hub data set.

The hub is unreachable where these tests run, so the hub path is tested by what it renders (the YAML names the
hub id lm-eval 0.4.13's own task definition names, and its documents render as lm-eval renders them) and by the
exact error an offline machine gets.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import datasets
import pytest
import yaml

from paratune.evaluation import sources
from paratune.evaluation.sources import file_source, resolve
from paratune.evaluation.task_yaml import lm_eval_tasks_dir
from paratune.evaluation.tasks import render_tasks

# paratune task -> (hub id, lm-eval's YAML naming it, or None where lm-eval 0.4.13 has no such task)
HUB_IDS = {
    "arc-easy": ("allenai/ai2_arc", "ARC-Easy", "arc/arc_easy.yaml"),
    "openbookqa": ("allenai/openbookqa", "main", "openbookqa/openbookqa.yaml"),
    "social_i_qa": ("lighteval/siqa", None, "siqa/siqa.yaml"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "winogrande/default.yaml"),
    "copa": ("aps/super_glue", "copa", "super_glue/copa/default.yaml"),
    "boolq": ("aps/super_glue", "boolq", "super_glue/boolq/default.yaml"),
    "sst2": ("nyu-mll/glue", "sst2", "glue/sst2/default.yaml"),
    "gsm8k": ("openai/gsm8k", "main", "gsm8k/gsm8k.yaml"),
    "squad": ("rajpurkar/squad", "plain_text", None),  # lm-eval has squadv2 only: the official v1.1 on the hub
}


def _lm_eval_dataset(relative: str) -> tuple[str, str | None]:
    """(dataset_path, dataset_name) of an installed lm-eval task YAML (read as text: some hold !function tags)."""
    text = (lm_eval_tasks_dir() / relative).read_text()
    path = re.search(r"^dataset_path: (\S+)$", text, flags=re.M).group(1)
    name = re.search(r"^dataset_name: (\S+)$", text, flags=re.M).group(1)
    return path, None if name == "null" else name


@pytest.fixture
def hub(monkeypatch):
    """No local copy, and a hub that answers: the (path, name) pairs the resolution loaded, in order."""
    monkeypatch.delenv("PARATUNE_DATA", raising=False)
    loaded = []
    monkeypatch.setattr(sources, "_load_hub", lambda path, name: loaded.append((path, name)))
    return loaded


@pytest.mark.parametrize("task", sorted(HUB_IDS))
def test_without_a_local_copy_a_task_renders_lm_evals_own_hub_data_set(task, hub, tmp_path):
    from lm_eval.tasks._yaml_loader import load_yaml

    path, name, lm_eval_yaml = HUB_IDS[task]
    if lm_eval_yaml:
        assert _lm_eval_dataset(lm_eval_yaml) == (path, name)  # the id is lm-eval 0.4.13's own
    assert resolve(task).kind == "hub" and hub == [(path, name)]
    (folder,) = render_tasks([task], out=tmp_path)
    rendered = next(f for f in folder.glob("*.yaml"))
    config = load_yaml(rendered)  # lm-eval's own loader: the !function converters resolve
    assert (config["dataset_path"], config["dataset_name"]) == (path, name)
    assert "dataset_kwargs" not in config
    assert callable(config.get("process_docs", callable))


@pytest.mark.parametrize("task, path, count, template", [("mmlu", "cais/mmlu", 57, "_continuation_template_yaml"),
                                                         ("bbh", "SaylorTwift/bbh", 27, "_zeroshot_template_yaml")])
def test_grouped_tasks_keep_lm_evals_hub_data_sets(task, path, count, template, hub, tmp_path):
    assert resolve(task).kind == "hub"
    assert len(hub) == count and {p for p, _ in hub} == {path}
    hub.clear()
    (folder,) = render_tasks([task], out=tmp_path)  # resolves (loads) again, then renders
    assert f"dataset_path: {path}\n" in (folder / task / template).read_text()
    names = [re.search(r'^"?dataset_name"?: "?([a-z_]+)"?$', f.read_text(), flags=re.M).group(1)
             for f in sorted((folder / task).glob("*.yaml")) if not f.name.startswith("_")]
    assert sorted(names) == sorted(n for _, n in hub)


def _lm_eval_render(template: str, doc: dict):
    """A doc_to_* value of an lm-eval YAML applied to a document, as lm-eval does (a bare column name, or a
    Jinja template whose output is parsed when it is a list or an index)."""
    from lm_eval.utils import apply_template

    if template in doc:
        return doc[template]
    out = apply_template(template, doc)
    return ast.literal_eval(out) if out[:1] in "[0123456789" else out


HUB_ROWS = {  # one row of each hub data set, in its own shape
    "arc-easy": {"id": "Mercury_1", "question": "Which gas do plants absorb?",
                 "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]},
                 "answerKey": "B"},
    "openbookqa": {"id": "7-980", "question_stem": "The sun is responsible for",
                   "choices": {"text": ["puppies learning new tricks", "plants sprouting, blooming and wilting"],
                               "label": ["A", "B"]}, "answerKey": " B"},
    "social_i_qa": {"context": "Tracy didn't go home that evening.", "question": "What does Tracy need to do?",
                    "answerA": "make a plan", "answerB": "go home", "answerC": "sleep", "label": "2"},
}


@pytest.mark.parametrize("task", sorted(HUB_ROWS))
def test_hub_documents_render_as_lm_eval_renders_them(task, hub, tmp_path):
    """paratune's formulation over the converted hub row == lm-eval's own YAML over the raw row."""
    from lm_eval.tasks._yaml_loader import load_yaml

    (folder,) = render_tasks([task], out=tmp_path)
    ours = load_yaml(next(folder.glob("*.yaml")))
    doc = ours["process_docs"](datasets.Dataset.from_list([HUB_ROWS[task]]))[0]
    theirs = yaml.safe_load((lm_eval_tasks_dir() / HUB_IDS[task][2]).read_text())
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        assert _lm_eval_render(ours[key], doc) == _lm_eval_render(theirs[key], HUB_ROWS[task]), key


def test_squad_hub_rows_convert_like_the_official_json():
    from paratune.evaluation.task_utils import process_squad, process_squad_rows

    article = {"title": "T", "paragraphs": [{"context": "C.", "qas": [
        {"id": "q1", "question": "Q?",
         "answers": [{"text": "a", "answer_start": 0}, {"text": "b", "answer_start": 1}]}]}]}
    row = {"id": "q1", "title": "T", "context": "C.", "question": "Q?",
           "answers": {"text": ["a", "b"], "answer_start": [0, 1]}}
    assert list(process_squad_rows(datasets.Dataset.from_list([row]))) == \
        list(process_squad(datasets.Dataset.from_list([article])))


def test_no_data_anywhere_is_one_error_naming_the_task_the_places_and_the_ways(tmp_path):
    """No --data, no (or an empty) local copy, and the hub offline (HF_HUB_OFFLINE=1, an empty datasets cache):
    the exact error. A fresh interpreter, since datasets reads the offline switch once, at import."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PARATUNE_DATA"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    (tmp_path / "empty").mkdir()
    script = ("from paratune.evaluation.sources import DataNotFound, resolve\n"
              f"for folder in (None, {str(tmp_path / 'empty')!r}):\n"
              "    try:\n        resolve('boolq', folder)\n"
              "    except DataNotFound as error:\n        print(error, end='\\n----\\n')\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    hub_line = ("  hub (lm-eval's data set): aps/super_glue (config boolq) could not be loaded: ConnectionError: "
                "Couldn't reach 'aps/super_glue' on the Hub (OfflineModeIsEnabled)\n")
    ways = ("  give the data with --data-dir DIR or $PARATUNE_DATA=DIR (a folder holding superglue/BoolQ/val.jsonl), "
            'or --data FILE (SuperGLUE BoolQ JSON Lines: "question", "passage", "label" (true/false))\n----\n')
    assert done.stdout == (
        "no data for --task boolq\n"
        "  local copy: none given (--data-dir and $PARATUNE_DATA are unset)\n" + hub_line + ways +
        "no data for --task boolq\n"
        f"  local copy: --data-dir {tmp_path / 'empty'} lacks superglue/BoolQ/val.jsonl\n" + hub_line + ways)


def test_data_file_and_local_copy_come_before_the_hub(tmp_path, hub, monkeypatch):
    copy = tmp_path / "copy"
    (copy / "superglue" / "BoolQ").mkdir(parents=True)
    val = copy / "superglue" / "BoolQ" / "val.jsonl"
    val.write_text(json.dumps({"question": "q", "passage": "p", "idx": 0, "label": True}) + "\n")
    assert resolve("boolq", copy).kind == "local" and resolve("boolq", copy).path == copy
    monkeypatch.setenv("PARATUNE_DATA", str(copy))
    assert resolve("boolq").kind == "local"
    assert resolve("boolq", data=val) == sources.Source("boolq", "file", val)  # a file wins over any folder
    assert resolve("copa").kind == "hub" and hub == [("aps/super_glue", "copa")]  # a folder without the task's files


def test_a_data_file_is_checked_before_anything_loads(tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "q", "label": True}) + "\n")
    with pytest.raises(ValueError) as error:
        file_source("boolq", wrong)
    assert str(error.value) == (
        f"--data {wrong}: the first record has no 'passage' (has ['label', 'question']); --task boolq reads "
        'SuperGLUE BoolQ JSON Lines: "question", "passage", "label" (true/false)')
    with pytest.raises(FileNotFoundError) as error:
        file_source("gsm8k", tmp_path / "none.jsonl")
    assert str(error.value) == (
        f"--data {tmp_path / 'none.jsonl'}: no such file (--task gsm8k reads JSON Lines: \"question\", \"answer\" "
        '(the reasoning, then "#### <number>"); 5-shot examples are drawn from the same file)')
    with pytest.raises(ValueError) as error:
        file_source("bbh", wrong)
    assert str(error.value) == ("--data is not accepted for --task bbh: its data is bbh/bbh/<task>.json for the "
                                "27 tasks; give the folder with --data-dir DIR or $PARATUNE_DATA=DIR")


def test_a_data_file_is_the_only_split_and_its_own_few_shot_pool(tmp_path, monkeypatch):
    """gsm8k on one file: 5-shot examples come from that file, never the scored item (fewshot_split ==
    test_split is what makes lm-eval leave the item out)."""
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"so #### {i + 1}"}) + "\n"
                            for i in range(7)))
    (folder,) = render_tasks(["gsm8k"], data=data, out=tmp_path / "tasks")
    config = yaml.safe_load((folder / "gsm8k.yaml").read_text())
    assert config["dataset_kwargs"] == {"data_files": {"test": str(data)}}
    assert (config["test_split"], config["fewshot_split"], config.get("training_split")) == ("test", "test", None)
