"""`paratune eval` on hand-made task files, with and without a PARA adapter."""

import json

import pytest
import torch
import transformers
from peft import PeftModel

from paratune.cli import main
from paratune.tasks import get_task
from paratune.tasks.scoring import choice_logliks


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_multiple_choice_file_with_para_adapter_passes_the_prompt_mask(tiny_folder, tmp_path, chat_tokenizer):
    rows = [{"prompt": f"Question {i}: pick one.", "answer": "yes", "choices": ["yes", "no"], "label": i % 2}
            for i in range(4)]
    data = write_jsonl(tmp_path / "mc.jsonl", rows)
    out = tmp_path / "result.json"
    assert main(["eval", "--model", str(tiny_folder / "model"), "--adapter", str(tiny_folder / "tenant"),
                 "--task", "file", "--data", str(data), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 4 and len(result["predictions"]) == 4
    model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_folder / "model"),
                                      tiny_folder / "tenant").eval()
    examples = get_task("file").load(str(data), None)
    expected = choice_logliks(model, chat_tokenizer, examples, prompt_mask_kwarg="para_prompt_mask")
    for prediction, logliks in zip(result["predictions"], expected):
        torch.testing.assert_close(torch.tensor(prediction["logliks"]), torch.tensor(logliks), atol=1e-4, rtol=1e-4)
        assert prediction["pred_index"] == max(range(2), key=lambda k: logliks[k])
    assert result["accuracy"] == sum(p["correct"] for p in result["predictions"]) / 4


@pytest.mark.parametrize("args, message", [
    (["--task", "file"], "--task file needs --data"),
    (["--task", "file", "--data", "missing.jsonl"], "missing.jsonl"),
    (["--task", "sst2", "--adapter", "nowhere"], "has no adapter_config.json"),
])
def test_eval_errors_are_clear(tiny_folder, capsys, args, message):
    assert main(["eval", "--model", str(tiny_folder / "model"), *args]) == 2
    assert message in capsys.readouterr().err


def test_unknown_task_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--task", "nonsense"])
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
