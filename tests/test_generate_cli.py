"""`paratune generate` end to end on a tiny model saved with the real SmolLM2 tokenizer."""

import json

import pytest
import transformers
from peft import PeftModel

from paratune.cli import main


@pytest.fixture()
def folder(tiny_folder):
    return tiny_folder


def test_prompts_file_runs_in_one_batch_and_keeps_order(folder, tmp_path, chat_tokenizer):
    lines = [{"prompt": "Hello there", "adapter": "t", "max_tokens": 6},
             {"prompt": "Good morning", "adapter": None, "max_tokens": 4},
             {"prompt": "A third prompt, longer than the others", "adapter": "t", "max_tokens": 5}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(folder / "model"), "--adapter", f"t={folder / 'tenant'}",
                 "--prompts-file", str(prompts), "--chat", "--output", str(out)]) == 0
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["adapter"] for r in results] == ["t", None, "t"]
    for line, result in zip(lines, results):
        base = transformers.AutoModelForCausalLM.from_pretrained(folder / "model")
        model = PeftModel.from_pretrained(base, folder / "tenant") if line["adapter"] else base
        ids = chat_tokenizer.apply_chat_template([{"role": "user", "content": line["prompt"]}],
                                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
        expected = model.generate(**ids, max_new_tokens=line["max_tokens"], do_sample=False)
        expected = expected[0, ids["input_ids"].shape[1]:].tolist()
        assert result["token_ids"] == expected[: len(result["token_ids"])]
        assert len(result["token_ids"]) == line["max_tokens"] or result["finish_reason"] == "eos"
        assert result["text"] == chat_tokenizer.decode(result["token_ids"], skip_special_tokens=True)


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a"}\n{broken\n', "p.jsonl line 2: malformed JSON"),
    ('{"prompt": "a", "adapter": "nope"}\n', "adapter 'nope' is not loaded"),
    ('{"prompt": "a", "temperature": -1}\n', "p.jsonl line 1: temperature must be in [0, 2]"),
    ('{"prompt": "a", "colour": 1}\n', "unknown field(s) ['colour']"),
    ('\n', "no prompts"),
])
def test_bad_prompts_files_are_reported_with_file_and_line(folder, tmp_path, capsys, content, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(content)
    assert main(["generate", "--model", str(folder / "model"), "--prompts-file", str(prompts)]) == 2
    assert message in capsys.readouterr().err


def test_prompt_and_prompts_file_are_exclusive(folder, capsys):
    assert main(["generate", "--model", str(folder / "model")]) == 2
    assert "exactly one of --prompt or --prompts-file" in capsys.readouterr().err
