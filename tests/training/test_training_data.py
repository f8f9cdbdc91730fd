"""Tests for paratune.training.data: readers, formats, tokenisation, dataset building, collator, split."""

from __future__ import annotations

import json
import logging
import pickle

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from paratune.training import (
    FORMATS,
    IGNORE_INDEX,
    ParaDataCollator,
    build_dataset,
    encode_example,
    load_records,
    split_validation,
)

CHAT_FORMATS = ("alpaca", "chat", "prompt-completion")  # multiple-choice: tests/training/test_multiple_choice.py
assert set(CHAT_FORMATS) < set(FORMATS)

# One record per format, plus the prompt messages / response text they must produce.
RECORDS = {
    "alpaca": {"instruction": "Translate to French.", "input": "Good morning, friend.", "output": "Bonjour, mon ami."},
    "chat": {
        "messages": [
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "Capital of Italy?"},
            {"role": "assistant", "content": "Rome."},
            {"role": "user", "content": "And of Spain?"},
            {"role": "assistant", "content": "Madrid, of course."},
        ]
    },
    "prompt-completion": {"prompt": "The sum of 2 and 3 is", "completion": " five, written 5."},
}
PROMPT_MESSAGES = {
    "alpaca": [{"role": "user", "content": "Translate to French.\n\nGood morning, friend."}],
    "chat": RECORDS["chat"]["messages"][:-1],
    "prompt-completion": [{"role": "user", "content": "The sum of 2 and 3 is"}],
}
RESPONSES = {"alpaca": "Bonjour, mon ami.", "chat": "Madrid, of course.", "prompt-completion": " five, written 5."}
PLAIN_PROMPTS = {
    "alpaca": "Translate to French.\n\nGood morning, friend.",
    "chat": "system: You answer in one word.\n\nuser: Capital of Italy?\n\nassistant: Rome.\n\n"
    "user: And of Spain?\n\nassistant: ",
    "prompt-completion": "The sum of 2 and 3 is",
}


def _expected_prompt_ids(tok, fmt):
    if tok.chat_template:
        return list(tok.apply_chat_template(PROMPT_MESSAGES[fmt], add_generation_prompt=True, return_dict=False))
    return tok(PLAIN_PROMPTS[fmt])["input_ids"]


def _end_of_response(tok):
    # SmolLM2's template closes an assistant turn with "<|im_end|>\n"; without a template we append eos.
    return "<|im_end|>\n" if tok.chat_template else tok.eos_token


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------------------ encoding


@pytest.mark.parametrize("fmt", CHAT_FORMATS)
def test_encode_example_masks_and_labels(tokenizer, fmt):
    ex = encode_example(tokenizer, RECORDS[fmt], fmt, max_length=512)
    prompt_ids = _expected_prompt_ids(tokenizer, fmt)
    n_p = len(prompt_ids)
    ids, labels, mask = ex["input_ids"], ex["labels"], ex["para_prompt_mask"]
    assert ex["n_prompt_tokens"] == n_p and ex["truncated"] is False
    assert len(ids) == len(labels) == len(mask) == n_p + ex["n_response_tokens"]
    assert ids[:n_p] == prompt_ids
    # labels are -100 exactly on the prompt, and equal the input ids on the response
    assert labels[:n_p] == [IGNORE_INDEX] * n_p
    assert all(lab != IGNORE_INDEX for lab in labels[n_p:])
    assert labels[n_p:] == ids[n_p:]
    # para_prompt_mask is True exactly on the prompt
    assert mask == [True] * n_p + [False] * (len(ids) - n_p)
    assert all(isinstance(m, bool) for m in mask)
    # the supervised tokens decode to the response followed by the end-of-turn marker
    decoded = tokenizer.decode([lab for lab in labels if lab != IGNORE_INDEX])
    assert decoded == RESPONSES[fmt] + _end_of_response(tokenizer)
    if tokenizer.chat_template:  # the prompt ends with the assistant header (generation prompt)
        assert tokenizer.decode(ids[:n_p]).endswith("<|im_start|>assistant\n")
    else:
        assert labels[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("fmt", CHAT_FORMATS)
def test_build_dataset_and_collate(tokenizer, fmt, tmp_path):
    short = dict(RECORDS[fmt])
    if fmt == "alpaca":
        short = {"instruction": "Hi", "output": "Hello."}
    elif fmt == "prompt-completion":
        short = {"prompt": "Hi", "completion": " there"}
    else:
        short = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    path = _write_jsonl(tmp_path / "d.jsonl", [RECORDS[fmt], short, RECORDS[fmt]])
    ds, stats = build_dataset(tokenizer, str(path), fmt, max_length=512)
    assert len(ds) == 3 and stats.n_records == 3 and stats.n_examples == 3
    assert stats.n_skipped_too_long == 0 and stats.n_truncated == 0
    assert stats.n_tokens == sum(len(e["input_ids"]) for e in ds)
    assert set(ds[0]) == {"input_ids", "labels", "para_prompt_mask"}
    batch = ParaDataCollator(tokenizer)([ds[i] for i in range(3)])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["para_prompt_mask"].shape
    assert batch["para_prompt_mask"].dtype == torch.bool
    att = batch["attention_mask"].bool()
    assert att.sum().item() == stats.n_tokens
    assert not att[1].all(), "the short example must be padded"
    expected = (batch["labels"] == IGNORE_INDEX) & att
    assert torch.equal(batch["para_prompt_mask"][att], expected[att])
    assert not batch["para_prompt_mask"][~att].any()
    assert (batch["labels"][~att] == IGNORE_INDEX).all()
    # every example keeps at least one prompt and one response token
    assert (batch["para_prompt_mask"].sum(1) > 0).all()
    assert ((batch["labels"] != IGNORE_INDEX).sum(1) > 0).all()


def test_alpaca_without_input_has_no_separator(plain_tokenizer):
    for extra in ({}, {"input": ""}, {"input": None}, {"input": "   "}):
        rec = {"instruction": "Name a colour.", "output": "Blue", **extra}
        ex = encode_example(plain_tokenizer, rec, "alpaca", 64)
        assert plain_tokenizer.decode(ex["input_ids"][: ex["n_prompt_tokens"]]) == "Name a colour."


def test_format_name_is_normalised(plain_tokenizer):
    rec = {"prompt": "a", "completion": "b"}
    assert encode_example(plain_tokenizer, rec, "prompt_completion", 16) == encode_example(
        plain_tokenizer, rec, "Prompt-Completion", 16
    )


# ------------------------------------------------------------------------------- length handling


def test_overlong_prompt_is_skipped_and_counted(tokenizer, tmp_path, caplog):
    long_prompt = "word " * 200
    records = [
        {"prompt": "Short prompt", "completion": " ok"},
        {"prompt": long_prompt, "completion": " skipped"},
        {"prompt": long_prompt + "again", "completion": " skipped too"},
    ]
    assert encode_example(tokenizer, records[1], "prompt-completion", 64) is None
    path = _write_jsonl(tmp_path / "d.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="paratune.training.data"):
        ds, stats = build_dataset(tokenizer, path, "prompt-completion", max_length=64)
    assert len(ds) == 1 and stats.n_records == 3 and stats.n_skipped_too_long == 2 and stats.n_examples == 1
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "skipped 2 of 3" in warning and "max_length=64" in warning and "line 2" in warning
    # everything skipped -> clear error
    _write_jsonl(path, records[1:])
    with pytest.raises(ValueError, match="all 2 records were skipped"):
        build_dataset(tokenizer, path, "prompt-completion", max_length=64)


def test_prompt_filling_max_length_exactly_is_skipped(plain_tokenizer):
    rec = {"prompt": "one two three four", "completion": " five"}
    n_prompt = len(plain_tokenizer(rec["prompt"])["input_ids"])
    assert encode_example(plain_tokenizer, rec, "prompt-completion", n_prompt) is None  # no room for a response
    ex = encode_example(plain_tokenizer, rec, "prompt-completion", n_prompt + 1)
    assert ex["n_response_tokens"] == 1 and ex["truncated"]


def test_truncation_keeps_prompt_intact(tokenizer, tmp_path):
    rec = {"instruction": "Count upwards.", "output": " ".join(str(i) for i in range(300))}
    full = encode_example(tokenizer, rec, "alpaca", 10_000)
    n_p = full["n_prompt_tokens"]
    max_length = n_p + 7
    ex = encode_example(tokenizer, rec, "alpaca", max_length)
    assert ex["truncated"] and len(ex["input_ids"]) == max_length
    assert ex["input_ids"][:n_p] == full["input_ids"][:n_p]  # the whole prompt survives
    assert ex["input_ids"] == full["input_ids"][:max_length]  # only the response tail is cut
    assert ex["para_prompt_mask"] == [True] * n_p + [False] * 7
    assert ex["labels"] == [IGNORE_INDEX] * n_p + full["input_ids"][n_p:max_length]
    _, stats = build_dataset(tokenizer, [rec, {"instruction": "x", "output": "y"}], "alpaca", max_length)
    assert stats.n_truncated == 1 and stats.n_skipped_too_long == 0


# ------------------------------------------------------------------------------------------ readers


def test_load_json_list_and_jsonl_with_blank_lines(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps([{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]))
    b = tmp_path / "b.jsonl"
    b.write_text('{"prompt": "p3", "completion": "c3"}\n\n   \n{"prompt": "p4", "completion": "c4"}\n')
    recs = load_records([str(a), b])
    assert [r["prompt"] for r in recs] == ["p1", "p2", "p3", "p4"]
    assert all(isinstance(r, dict) for r in recs)
    assert recs[3].source.endswith("b.jsonl line 4")
    assert recs[1].source.endswith("a.json record index 1")
    assert recs[3] == {"prompt": "p4", "completion": "c4"}
    r = pickle.loads(pickle.dumps(recs[3]))
    assert r == recs[3] and r.source == recs[3].source


def test_jsonl_content_in_json_suffix_file(tmp_path):
    p = tmp_path / "lines.json"
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n')
    assert [r["prompt"] for r in load_records(p)] == ["a", "c"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": \n{"prompt": "e"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl line 3: malformed JSON"):
        load_records(p)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    p = tmp_path / "list.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"list\.jsonl line 2: expected a JSON object, got a JSON list"):
        load_records(p)


def test_json_file_not_a_list_of_objects(tmp_path):
    p = tmp_path / "obj.json"
    p.write_text(json.dumps({"data": [{"prompt": "a"}]}, indent=2))
    with pytest.raises(ValueError, match=r"obj\.json: expected a JSON list of objects.*got a JSON object"):
        load_records(p)
    p.write_text(json.dumps([{"prompt": "a"}, "oops"]))
    with pytest.raises(ValueError, match=r"record index 1 is a JSON string"):
        load_records(p)
    p.write_text('[{"prompt": "a"},\n {"prompt": ]')
    with pytest.raises(ValueError, match=r"obj\.json: invalid JSON at line 2"):
        load_records(p)


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_records([str(missing)])


@pytest.mark.parametrize("content", ["", "\n  \n", "[]"])
def test_empty_file_errors(tmp_path, content, plain_tokenizer):
    p = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    p.write_text(content)
    with pytest.raises(ValueError, match=r"empty"):
        load_records(p)
    with pytest.raises(ValueError, match=r"empty"):
        build_dataset(plain_tokenizer, p, "alpaca", 64)


def test_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="save_to_disk"):
        load_records(tmp_path)


def test_hf_datasets_folder_round_trip(tmp_path, plain_tokenizer):
    import datasets

    rows = [{"instruction": f"Say {i}", "input": "", "output": str(i)} for i in range(5)]
    ds_dir = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(ds_dir))
    assert load_records(ds_dir) == rows

    dd_dir = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])}
    ).save_to_disk(str(dd_dir))
    recs = load_records(str(dd_dir))
    assert recs == rows[:3]
    dataset, stats = build_dataset(plain_tokenizer, dd_dir, "alpaca", 64)
    assert len(dataset) == 3 and stats.n_records == 3

    no_train = tmp_path / "nt"
    datasets.DatasetDict(
        {"validation": datasets.Dataset.from_list(rows[:2]), "test": datasets.Dataset.from_list(rows[2:])}
    ).save_to_disk(str(no_train))
    with pytest.raises(ValueError, match=r"no 'train' split \(splits: test, validation\)"):
        load_records(no_train)


# ------------------------------------------------------------------------------------ format errors


@pytest.mark.parametrize(
    "fmt,record,field",
    [
        ("alpaca", {"instruction": "x"}, "output"),
        ("alpaca", {"output": "x"}, "instruction"),
        ("prompt-completion", {"prompt": "x"}, "completion"),
        ("prompt-completion", {"completion": "x"}, "prompt"),
        ("chat", {"conversation": []}, "messages"),
    ],
)
def test_missing_field_is_named_with_file_and_line(tmp_path, plain_tokenizer, fmt, record, field):
    with pytest.raises(ValueError, match=f"missing field '{field}'"):
        encode_example(plain_tokenizer, record, fmt, 64)
    good = {
        "alpaca": {"instruction": "a", "output": "b"},
        "prompt-completion": {"prompt": "a", "completion": "b"},
        "chat": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
    }[fmt]
    path = _write_jsonl(tmp_path / "f.jsonl", [good, good, record])
    with pytest.raises(ValueError, match=rf"missing field '{field}'.*f\.jsonl line 3"):
        build_dataset(plain_tokenizer, path, fmt, 64)
    jpath = tmp_path / "f.json"
    jpath.write_text(json.dumps([good, record]))
    with pytest.raises(ValueError, match=rf"missing field '{field}'.*f\.json record index 1"):
        build_dataset(plain_tokenizer, jpath, fmt, 64)


def test_wrong_field_type(plain_tokenizer):
    with pytest.raises(ValueError, match="field 'output' must be a string, got int"):
        encode_example(plain_tokenizer, {"instruction": "a", "output": 3}, "alpaca", 64)


def test_unknown_format_lists_allowed(plain_tokenizer):
    with pytest.raises(ValueError, match="unknown data format 'sharegpt'.*alpaca, chat, prompt-completion"):
        encode_example(plain_tokenizer, {"prompt": "a"}, "sharegpt", 64)
    with pytest.raises(ValueError, match="allowed formats: alpaca, chat, prompt-completion"):
        build_dataset(plain_tokenizer, [{"prompt": "a", "completion": "b"}], "oasst", 64)


@pytest.mark.parametrize(
    "messages,match",
    [
        ([{"role": "user", "content": "hi"}], "no assistant message"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}],
            "last message .* must be from the assistant.*'user'",
        ),
        ([{"role": "assistant", "content": "yo"}], "at least one message before"),
        ([{"role": "user"}, {"role": "assistant", "content": "yo"}], r"messages\[0\] is missing field 'content'"),
        ([], "non-empty list"),
    ],
)
def test_chat_errors(chat_tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        encode_example(chat_tokenizer, {"messages": messages}, "chat", 64)


# -------------------------------------------------------------------------------- template fallbacks


def test_template_without_prefix_property_falls_back_to_response_plus_eos(tokenizer_folder):
    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    # The generation prompt says "assistant" but rendered assistant turns say "bot": not a prefix.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>bot\n{% else %}<|im_start|>"
        "{{ m['role'] }}\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    ex = encode_example(tok, {"prompt": "Hi", "completion": "Hello"}, "prompt-completion", 64)
    n_p = ex["n_prompt_tokens"]
    assert tok.decode(ex["input_ids"][:n_p]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ex["input_ids"][n_p:]) == "Hello" + tok.eos_token


def test_template_without_end_of_turn_gets_eos(tokenizer_folder):
    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    ex = encode_example(tok, {"prompt": "Hi", "completion": "Hello"}, "prompt-completion", 64)
    n_p = ex["n_prompt_tokens"]
    assert tok.decode(ex["input_ids"][:n_p]) == "user: Hi\nassistant: "
    assert tok.decode(ex["input_ids"][n_p:]) == "Hello\n" + tok.eos_token


# ----------------------------------------------------------------------------------------- collator


def test_collator_padding_values(chat_tokenizer):
    pad = chat_tokenizer.pad_token_id
    features = [
        {"input_ids": [5, 6, 7], "labels": [-100, 7, 8], "para_prompt_mask": [True, False, False]},
        {"input_ids": [9], "labels": [-100], "para_prompt_mask": [True], "extra": "ignored"},
    ]
    batch = ParaDataCollator(chat_tokenizer)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "para_prompt_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 7, 8], [-100, -100, -100]]
    assert batch["para_prompt_mask"].tolist() == [[True, False, False], [True, False, False]]
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["para_prompt_mask"].dtype == torch.bool

    batch = ParaDataCollator(chat_tokenizer, pad_to_multiple_of=8)(features)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum().item() == 4
    assert (batch["labels"][:, 3:] == -100).all() and not batch["para_prompt_mask"][:, 3:].any()
    assert (batch["input_ids"][:, 3:] == pad).all()

    # tensors as features work too
    tfeat = [{k: torch.tensor(v) for k, v in f.items() if k != "extra"} for f in features]
    assert torch.equal(ParaDataCollator(chat_tokenizer)(tfeat)["input_ids"], ParaDataCollator(chat_tokenizer)(features)["input_ids"])


def test_collator_falls_back_to_eos_for_padding(tokenizer_folder):
    tok = AutoTokenizer.from_pretrained(tokenizer_folder)
    tok.pad_token = None
    assert tok.pad_token_id is None
    batch = ParaDataCollator(tok)(
        [{"input_ids": [5], "labels": [5], "para_prompt_mask": [False]}, {"input_ids": [5, 6], "labels": [5, 6], "para_prompt_mask": [True, False]}]
    )
    assert batch["input_ids"][0, 1].item() == tok.eos_token_id


def test_collator_with_dataloader(chat_tokenizer):
    records = [{"prompt": f"Question {i}?" + " more" * i, "completion": f" Answer {i}."} for i in range(6)]
    ds, _ = build_dataset(chat_tokenizer, records, "prompt-completion", 128)
    loader = DataLoader(ds, batch_size=4, collate_fn=ParaDataCollator(chat_tokenizer, pad_to_multiple_of=4))
    batches = list(loader)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 2]
    assert all(b["input_ids"].shape[1] % 4 == 0 for b in batches)


# -------------------------------------------------------------------------------------------- split


def test_split_validation_is_deterministic_and_disjoint():
    records = [{"i": i} for i in range(20)]
    train, val = split_validation(records, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert sorted(r["i"] for r in train + val) == list(range(20))
    assert split_validation(records, 0.25, seed=3) == (train, val)
    assert split_validation(records, 0.25, seed=4)[1] != val
    assert [r["i"] for r in train] == sorted(r["i"] for r in train)  # original order kept
    assert split_validation(records, 0.0, seed=0) == (records, [])
    assert len(split_validation(records[:3], 0.01, seed=0)[1]) == 1  # at least one validation record
    with pytest.raises(ValueError):
        split_validation(records, 1.0, seed=0)
    with pytest.raises(ValueError, match="training part would be empty"):
        split_validation(records[:1], 0.5, seed=0)


def test_split_keeps_record_sources(tmp_path, plain_tokenizer):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"prompt": f"p{i}", "completion": "c"} for i in range(9)] + [{"prompt": "x"}])
    train, val = split_validation(load_records(path), 0.5, seed=0)
    bad_part = train if any("completion" not in r for r in train) else val
    with pytest.raises(ValueError, match=r"s\.jsonl line 10"):
        build_dataset(plain_tokenizer, bad_part, "prompt-completion", 64)
