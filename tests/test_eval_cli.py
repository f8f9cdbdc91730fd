"""`paratune eval` (lm-eval front) on a hand-made multiple-choice file, with and without a PARA adapter."""

import json

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
    (["--task", "sst2", "--adapter", "nowhere"], "has no adapter_config.json"),
    (["--task", "sst2", "--data", "x.jsonl"], "--data is for --task multiple-choice"),
    (["--task", "file", "--data", "x.jsonl"], "replaced by --task multiple-choice"),
])
def test_eval_errors_are_clear(tiny_folder, capsys, args, message):
    assert main(["eval", "--model", str(tiny_folder / "model"), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_task_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--task", "nonsense"])
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
