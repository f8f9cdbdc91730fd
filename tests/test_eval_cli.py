"""`paratune eval` (lm-eval front) on hand-made files: the multiple-choice task, with and without a PARA adapter,
and built-in tasks given one file (--data) or a folder holding only their files (--data-dir)."""

import json
import shlex

import pytest
import torch
import transformers
from peft import PeftModel

from paratune.cli import main
from tests.evaluation.test_lm_eval import ITEMS, expected_scores


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("with_adapter", [False, True])
def test_multiple_choice_file_through_the_cli(with_adapter, tiny_folder, tmp_path, capsys, chat_tokenizer):
    data = write_jsonl(tmp_path / "mc.jsonl", ITEMS)
    out = tmp_path / "result.json"
    adapter = ["--adapter", str(tiny_folder / "tenant")] if with_adapter else []
    assert main(["eval", "--model", str(tiny_folder / "model"), *adapter, "--task", "multiple-choice",
                 "--data", str(data), "--limit", "3", "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.split("\nlm-eval results written")[0])
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder / "model").eval()
    if with_adapter:
        model = PeftModel.from_pretrained(model, tiny_folder / "tenant").eval()
    acc, acc_norm, lls = expected_scores(model, chat_tokenizer, ITEMS[:3])
    assert printed["n"] == 3
    assert printed["acc"] == pytest.approx(acc) and printed["acc_norm"] == pytest.approx(acc_norm)
    results = json.loads(out.read_text())  # lm-eval's result JSON
    assert results["results"]["multiple_choice"]["acc,none"] == pytest.approx(acc)
    assert results["n-samples"]["multiple_choice"]["effective"] == 3
    assert results["paratune"]["summary"]["acc_norm"] == pytest.approx(acc_norm)
    samples = [json.loads(line) for line in out.with_name("result.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3
    for sample, expected in zip(samples, lls):
        torch.testing.assert_close(torch.tensor([r[0][0] for r in sample["resps"]], dtype=torch.float64),
                                   torch.tensor(expected, dtype=torch.float64), atol=2e-4, rtol=0)


GOOD = {"query": "q", "choices": ["a", "b"], "gold": 0}


@pytest.mark.parametrize("bad, field", [
    ({"choices": ["a", "b"], "gold": 0}, "field 'query'"),
    ({"query": "q", "choices": ["a"], "gold": 0}, "field 'choices'"),
    ({"query": "q", "choices": ["a", 3], "gold": 0}, "field 'choices'"),
    ({"query": "q", "choices": ["a", "b"], "gold": 2}, "field 'gold'"),
    ({"query": "q", "choices": ["a", "b"], "gold": "0"}, "field 'gold'"),
    ("{not json", "malformed JSON"),
])
def test_invalid_multiple_choice_lines_name_file_line_and_field(bad, field, tiny_folder, tmp_path, capsys):
    data = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad])
    assert main(["eval", "--model", str(tiny_folder / "model"), "--task", "multiple-choice",
                 "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data} line 2: " in err and field in err


@pytest.mark.parametrize("args, message", [
    (["--task", "multiple-choice"], "--task multiple-choice needs --data"),
    (["--task", "multiple-choice", "--data", "missing.jsonl"], "missing.jsonl"),
    (["--task", "boolq", "--data", "{boolq}", "--adapter", "nowhere"], "has no adapter_config.json"),
    (["--task", "sst2", "--data", "x.tsv"],
     "--data x.tsv: no such file (--task sst2 reads TSV with the header sentence<TAB>label (label 0/1), "
     "as sst2/glue_dev.tsv)"),
    (["--task", "mmlu", "--data", "x.csv"],
     "data must be unset for --task mmlu (its data is one file per subject: give the folder with --data-dir DIR "
     "or $PARATUNE_DATA=DIR), got 'x.csv'"),
    (["--task", "boolq", "--data-dir", "no/such/folder"],
     "data_dir must be an existing folder (the local copy of the evaluation data) or None, got 'no/such/folder'"),
    (["--task", "file", "--data", "x.jsonl"], "replaced by --task multiple-choice"),
])
def test_eval_errors_are_clear(tiny_folder, tmp_path, capsys, args, message):
    boolq = write_jsonl(tmp_path / "boolq.jsonl", BOOLQ)
    args = [a.format(boolq=boolq) for a in args]
    assert main(["eval", "--model", str(tiny_folder / "model"), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_task_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--task", "nonsense"])
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


# ----- built-in tasks on the user's own file or folder ---------------------------------------------------
BOOLQ = [  # SuperGLUE BoolQ JSONL, as superglue/BoolQ/val.jsonl
    {"question": "is water wet", "passage": "Water is a liquid, and liquids make things wet.", "idx": 0, "label": True},
    {"question": "is the sun cold", "passage": "The sun is a very hot star.", "idx": 1, "label": False},
    {"question": "do cats bark", "passage": "Cats meow and dogs bark.", "idx": 2, "label": False},
]
SST2 = "sentence\tlabel\na charming and often affecting journey . \t1\nit 's a mess . \t0\ndull , dull , dull . \t0\n"


def boolq_items(rows):
    """lm-eval's boolq rendering of the rows as multiple-choice items."""
    return [{"query": f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", "choices": ["no", "yes"],
             "gold": int(r["label"])} for r in rows]


def sst2_items(tsv):
    rows = [line.split("\t") for line in tsv.splitlines()[1:]]
    return [{"query": f"{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
             "choices": ["negative", "positive"], "gold": int(label)} for sentence, label in rows]


@pytest.mark.parametrize("task, given", [("boolq", "data"), ("boolq", "data_dir"), ("sst2", "data")])
def test_builtin_task_on_a_users_file_or_folder(task, given, tiny_folder, tmp_path, capsys, chat_tokenizer):
    """--data FILE (the format of the task's file in the local copy) or --data-dir holding only that task's file:
    scored exactly as lm-eval's formulation of the task, first --limit items in file order."""
    if task == "boolq":
        folder_file, items, text = "superglue/BoolQ/val.jsonl", boolq_items(BOOLQ), "".join(
            json.dumps(r) + "\n" for r in BOOLQ)
    else:
        folder_file, items, text = "sst2/glue_dev.tsv", sst2_items(SST2), SST2
    file = tmp_path / "copy" / folder_file if given == "data_dir" else tmp_path / folder_file.split("/")[-1]
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)
    where = ["--data", str(file)] if given == "data" else ["--data-dir", str(tmp_path / "copy")]
    out = tmp_path / "result.json"
    argv = ["eval", "--model", str(tiny_folder / "model"), "--task", task, *where, "--limit", "2",
            "--output", str(out)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.split("\nlm-eval results written")[0])
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder / "model").eval()
    acc, _, lls = expected_scores(model, chat_tokenizer, items[:2])
    assert printed["n"] == 2 and printed["acc"] == pytest.approx(acc)
    assert printed["data"] == (str(file) if given == "data" else f"{tmp_path / 'copy'}: {folder_file}")
    results = json.loads(out.read_text())
    assert results["paratune"]["command"] == shlex.join(["paratune", *argv])  # the command as typed
    samples = [json.loads(line) for line in out.with_name("result.samples.jsonl").read_text().splitlines()]
    assert [s["arguments"][0][0] for s in samples] == [i["query"] for i in items[:2]]  # lm-eval's context
    for sample, expected in zip(samples, lls):
        assert [r[0][0] for r in sample["resps"]] == pytest.approx(expected, abs=2e-4)
