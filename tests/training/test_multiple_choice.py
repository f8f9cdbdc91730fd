"""The generic multiple-choice train format: {"query", "choices", "gold"} -> prompt = the raw query (never a chat
template), response = " " + choices[gold], split into tokens exactly as lm-eval splits query + " " + choice."""

from __future__ import annotations

import json
import types

import pytest
from lm_eval.api.model import TemplateLM
from lm_eval.models.huggingface import HFLM

from paratune.cli import main
from paratune.training import IGNORE_INDEX, build_dataset, encode_example

RECORD = {"query": "Question: Which is a fruit?\nAnswer:", "choices": ["a stone", "an apple", "a cloud"], "gold": 1}


def lm_eval_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4's own split of a log-likelihood request (HFLM.tok_encode + TemplateLM._encode_pair)."""
    lm = types.SimpleNamespace(backend="causal", tokenizer=tokenizer, add_bos_token=None, custom_prefix_token_id=None)
    lm.prefix_token_id = HFLM.prefix_token_id.fget(lm)
    lm.tok_encode = lambda string, **kw: HFLM.tok_encode(lm, string, **kw)
    return TemplateLM._encode_pair(lm, context, continuation)


@pytest.mark.parametrize("query", [RECORD["query"], "Trailing space: ", "Premise. The man fell, because"])
def test_tokens_are_lm_eval_scoring_tokens_and_no_template(tokenizer, query):
    """With or without a chat template on the tokenizer: the ids are lm-eval's context + continuation."""
    record = {**RECORD, "query": query}
    ex = encode_example(tokenizer, record, "multiple-choice", max_length=128)
    context_ids, continuation_ids = lm_eval_pair(tokenizer, query, " an apple")
    assert ex["input_ids"] == context_ids + continuation_ids
    n = len(context_ids)
    assert ex["n_prompt_tokens"] == n and ex["n_response_tokens"] == len(continuation_ids) > 0
    assert ex["labels"] == [IGNORE_INDEX] * n + continuation_ids
    assert ex["para_prompt_mask"] == [True] * n + [False] * len(continuation_ids)
    assert tokenizer.decode(ex["input_ids"]) == query + " an apple"  # raw text, no template, no EOS
    assert tokenizer.eos_token_id not in ex["input_ids"]


def test_multiple_choice_dataset_and_overlong_prompt(plain_tokenizer, tmp_path):
    path = tmp_path / "mc.jsonl"
    long_query = {"query": "word " * 80, "choices": ["x", "y"], "gold": 0}
    path.write_text("".join(json.dumps(r) + "\n" for r in [RECORD, long_query, {**RECORD, "gold": 2}]))
    ds, stats = build_dataset(plain_tokenizer, str(path), "multiple_choice", max_length=32)
    assert (stats.n_records, stats.n_examples, stats.n_skipped_too_long) == (3, 2, 1)
    responses = [plain_tokenizer.decode([t for t in e["labels"] if t != IGNORE_INDEX]) for e in ds]
    assert responses == [" an apple", " a cloud"]


BAD = [
    ({"choices": ["a", "b"], "gold": 0}, "missing field 'query' required by format 'multiple-choice'"),
    ({"query": "  ", "choices": ["a", "b"], "gold": 0}, "field 'query' is empty"),
    ({"query": 3, "choices": ["a", "b"], "gold": 0}, "field 'query' must be a string, got int"),
    ({"query": "q", "gold": 0}, "missing field 'choices' required by format 'multiple-choice'"),
    ({"query": "q", "choices": "a, b", "gold": 0}, "field 'choices' must be a non-empty list of strings, got 'a, b'"),
    ({"query": "q", "choices": [], "gold": 0}, r"field 'choices' must be a non-empty list of strings, got \[\] \(list\)"),
    ({"query": "q", "choices": ["a", 2], "gold": 0}, r"but choices\[1\] is 2 \(int\)"),
    ({"query": "q", "choices": ["a", "b"]}, "missing field 'gold' required by format 'multiple-choice'"),
    ({"query": "q", "choices": ["a", "b"], "gold": 2}, r"field 'gold' must be an integer index into 'choices' \(0 to 1\), got 2"),
    ({"query": "q", "choices": ["a", "b"], "gold": "1"}, r"field 'gold' must be an integer index .* got '1'"),
    ({"query": "q", "choices": ["a", "b"], "gold": True}, r"field 'gold' must be an integer index .* got True"),
]


@pytest.mark.parametrize("record, message", BAD)
def test_invalid_lines_name_file_line_and_field(plain_tokenizer, tmp_path, record, message):
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=message + r".*\(.*f\.jsonl line 2\)"):
        build_dataset(plain_tokenizer, str(path), "multiple-choice", 64)


def test_train_cli_multiple_choice(tiny_folder, tmp_path, capsys):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({**RECORD, "gold": i % 3}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    argv = ["train", "--model", str(tiny_folder / "model"), "--data", str(data), "--format", "multiple-choice",
            "--output", str(out), "--max-steps", "2", "--batch-size", "4", "--r", "4"]
    assert main(argv) == 0
    assert json.loads((out / "train_config.json").read_text())["format"] == "multiple-choice"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "PARA"
    capsys.readouterr()

    data.write_text(json.dumps(RECORD) + "\n" + json.dumps({"query": "q", "choices": ["a"], "gold": 1}) + "\n")
    assert main([*argv[:-8], "--output", str(tmp_path / "bad"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "field 'gold' must be an integer index into 'choices' (0 to 0), got 1" in err and "mc.jsonl line 2" in err
