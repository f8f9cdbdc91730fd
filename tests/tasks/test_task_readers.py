"""Task readers: the real shared files, hand-made SQuAD/COPA/SST-2/JSONL files, and error messages."""

from __future__ import annotations

import json

import pytest

from paratune.tasks import TASKS, Example, get_task
from paratune.tasks.base import data_root
from paratune.tasks.squad import split_by_title

REAL = ["boolq", "arc-easy", "openbookqa", "social_i_qa", "winogrande", "gsm8k", "squad", "copa", "sst2"]


def test_registry_names():
    assert set(TASKS) == set(REAL) | {"file"}
    assert get_task("copa") is TASKS["copa"]
    with pytest.raises(ValueError) as e:
        get_task("nope")
    for name in TASKS:
        assert name in str(e.value)


@pytest.mark.parametrize("name", REAL)
def test_real_files_load_with_limit(name):
    if not data_root().is_dir():
        pytest.skip("shared data not available")
    task = get_task(name)
    examples = task.load(limit=5)
    assert len(examples) == 5
    for e in examples:
        assert isinstance(e, Example) and e.prompt and e.answer and e.id
        if task.kind == "multiple_choice":
            assert e.choices and 0 <= e.label < len(e.choices)
            assert e.choices[e.label] == e.answer
        else:
            assert e.choices is None
    assert len({e.id for e in examples}) == 5


def test_real_alpaca_choices_follow_output_style():
    if not data_root().is_dir():
        pytest.skip("shared data not available")
    e = get_task("boolq").load(limit=1)[0]
    assert e.choices == ["the correct answer is true", "the correct answer is false"]
    e = get_task("arc-easy").load(limit=2)[1]
    assert e.choices == [f"the correct answer is answer{i}" for i in range(1, 5)]
    assert e.label == 1 and e.answer == "the correct answer is answer2"
    e = get_task("winogrande").load(limit=1)[0]
    assert e.choices == ["the correct answer is option1", "the correct answer is option2"] and e.label == 1
    e = get_task("social_i_qa").load(limit=1)[0]
    assert len(e.choices) == 3
    # ARC has a few 5-option questions: the options come from each record's "Answer format:" line
    five = [x for x in get_task("arc-easy").load() if len(x.choices) == 5]
    assert five and five[0].choices[-1] == "the correct answer is answer5"


def test_real_gsm8k_and_squad_fields():
    if not data_root().is_dir():
        pytest.skip("shared data not available")
    e = get_task("gsm8k").load(limit=1)[0]
    assert e.meta["target"] == 18 and e.answer.endswith("#### 18") and e.prompt.startswith("Janet")
    e = get_task("squad").load(limit=1)[0]
    assert e.id == "56be4db0acb8001400a502ec" and e.answer == "Denver Broncos"
    assert e.meta["title"] == "Super_Bowl_50" and "Which NFL team" in e.prompt and "Super Bowl 50 was" in e.prompt


def test_data_root_env_override(tmp_path, monkeypatch):
    (tmp_path / "superglue" / "COPA").mkdir(parents=True)
    (tmp_path / "superglue" / "COPA" / "val.jsonl").write_text(
        json.dumps({"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 0}) + "\n"
    )
    monkeypatch.setenv("PARATUNE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert [e.answer for e in get_task("copa").load()] == ["A."]


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        get_task("copa").load(missing)
    with pytest.raises(ValueError, match="pass a path"):
        get_task("file").load()


SQUAD_V11 = {
    "version": "1.1",
    "data": [
        {
            "title": "Eiffel_Tower",
            "paragraphs": [
                {
                    "context": "The Eiffel Tower is in Paris. It was completed in 1889.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "Where is the Eiffel Tower?",
                            "answers": [{"answer_start": 25, "text": "Paris"}, {"answer_start": 25, "text": "in Paris"}],
                        },
                        {"id": "q2", "question": "When was it completed?", "answers": [{"answer_start": 50, "text": "1889"}]},
                    ],
                }
            ],
        },
        {
            "title": "Moon",
            "paragraphs": [
                {"context": "The Moon orbits Earth.", "qas": [{"id": "q3", "question": "What orbits Earth?",
                                                              "answers": [{"answer_start": 0, "text": "The Moon"}]}]}
            ],
        },
    ],
}


def test_squad_reader_hand_made(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(SQUAD_V11))
    ex = get_task("squad").load(path)
    assert [e.id for e in ex] == ["q1", "q2", "q3"]
    assert ex[0].answer == "Paris" and ex[0].meta["answers"] == ["Paris", "in Paris"]
    assert ex[0].meta["title"] == "Eiffel_Tower" and ex[2].meta["title"] == "Moon"
    assert "The Eiffel Tower is in Paris." in ex[0].prompt and "Where is the Eiffel Tower?" in ex[0].prompt
    assert len(get_task("squad").load(path, limit=2)) == 2


def test_squad_missing_field_and_malformed(tmp_path):
    bad = json.loads(json.dumps(SQUAD_V11))
    del bad["data"][0]["paragraphs"][0]["qas"][1]["question"]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError) as e:
        get_task("squad").load(path)
    assert "'question'" in str(e.value) and "dev.json" in str(e.value) and "qas[1]" in str(e.value)
    path.write_text('{"data": [\n{"title": }\n]}')
    with pytest.raises(ValueError, match=r"dev\.json line 2: malformed JSON"):
        get_task("squad").load(path)


def test_squad_split_by_title_is_deterministic_and_disjoint():
    ex = [Example(id=str(i), prompt="p", answer="a", meta={"title": f"T{i % 7}"}) for i in range(70)]
    train, evals = split_by_title(ex, eval_fraction=0.3, seed=1)
    assert len(train) + len(evals) == 70
    assert not {e.meta["title"] for e in train} & {e.meta["title"] for e in evals}
    assert len({e.meta["title"] for e in evals}) == 2  # round(0.3 * 7)
    again = split_by_title(list(reversed(ex)), eval_fraction=0.3, seed=1)
    assert {e.id for e in again[1]} == {e.id for e in evals}
    other = [split_by_title(ex, 0.3, seed=s)[1] for s in range(5)]
    assert len({frozenset(e.meta["title"] for e in o) for o in other}) > 1


def _copa_line(**over):
    rec = {"premise": "The man turned on the faucet.", "choice1": "The toilet filled with water.",
           "choice2": "Water flowed from the spout.", "question": "effect", "label": 1, "idx": 0}
    rec.update(over)
    return json.dumps({k: v for k, v in rec.items() if v is not None})


def test_copa_reader_hand_made(tmp_path):
    path = tmp_path / "copa.jsonl"
    path.write_text(_copa_line() + "\n\n" + _copa_line(question="cause", label=0, idx=7) + "\n")
    ex = get_task("copa").load(path)
    assert len(ex) == 2
    assert ex[0].prompt == "Premise: The man turned on the faucet.\nWhat happened as a result?"
    assert ex[1].prompt.endswith("What was the cause?")
    assert ex[0].choices == ["The toilet filled with water.", "Water flowed from the spout."]
    assert ex[0].label == 1 and ex[0].answer == "Water flowed from the spout."
    assert ex[1].label == 0 and ex[1].id.endswith("/7")


def test_copa_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "copa.jsonl"
    path.write_text(_copa_line() + "\n" + _copa_line(choice2=None) + "\n")
    with pytest.raises(ValueError) as e:
        get_task("copa").load(path)
    assert str(e.value) == f"{path} line 2: missing field 'choice2'"
    path.write_text(_copa_line() + "\n" + _copa_line() + "\n{not json\n")
    with pytest.raises(ValueError, match=r"copa\.jsonl line 3: malformed JSON"):
        get_task("copa").load(path)
    path.write_text(_copa_line(question="why") + "\n")
    with pytest.raises(ValueError, match=r"line 1: field 'question'"):
        get_task("copa").load(path)


def test_gsm8k_errors(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "2\n#### 2"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    with pytest.raises(ValueError, match=r"g\.jsonl line 2: missing field 'answer'"):
        get_task("gsm8k").load(path)
    path.write_text(json.dumps({"question": "1+1?", "answer": "two"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: .*####"):
        get_task("gsm8k").load(path)


def test_alpaca_reader_and_errors(tmp_path):
    rec = {"instruction": "Q?\n\nAnswer1: a Answer2: b Answer3: c\n\nAnswer format: answer1/answer2/answer3",
           "input": "ctx", "output": "the correct answer is answer3", "answer": "answer3"}
    path = tmp_path / "test.json"
    path.write_text(json.dumps([rec]))
    (e,) = get_task("arc-easy").load(path)
    assert e.prompt == rec["instruction"] + "\n\nctx"
    assert e.choices == ["the correct answer is answer1", "the correct answer is answer2", "the correct answer is answer3"]
    assert e.label == 2
    path.write_text(json.dumps([rec, {k: v for k, v in rec.items() if k != "output"}]))
    with pytest.raises(ValueError, match=r"test\.json record 1: missing field 'output'"):
        get_task("arc-easy").load(path)
    path.write_text(json.dumps([dict(rec, answer="answer9", output="the correct answer is answer9")]))
    with pytest.raises(ValueError, match="record 0: answer 'answer9' is not one of"):
        get_task("arc-easy").load(path)


def test_sst2_reader_and_errors(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\na fine film . \t1\ndull \t0\n")
    ex = get_task("sst2").load(path)
    assert [e.label for e in ex] == [1, 0] and ex[0].choices == ["negative", "positive"]
    assert ex[0].answer == "positive" and "a fine film ." in ex[0].prompt
    path.write_text("sentence\tlabel\na fine film .\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"dev\.tsv line 3"):
        get_task("sst2").load(path)
    path.write_text("text\tlabel\nx\t1\n")
    with pytest.raises(ValueError, match=r"dev\.tsv line 1: missing field 'sentence'"):
        get_task("sst2").load(path)


def test_file_task(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"prompt": "2+2?", "answer": "4"}, {"prompt": "3+3?", "answer": "6", "id": "x"}]))
    task = get_task("file")
    ex = task.load(path)
    assert [e.answer for e in ex] == ["4", "6"] and ex[1].id == "x"
    assert not task.is_multiple_choice(ex)
    assert task.score([" 4 ", "7"], ex) == {"exact_match": 0.5}

    path.write_text(json.dumps({"prompt": "Sky?", "choices": ["blue", "green"], "label": 0}) + "\n")
    ex = task.load(path)
    assert ex[0].answer == "blue" and task.is_multiple_choice(ex)
    assert task.score([0], ex) == {"accuracy": 1.0}

    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n" + json.dumps({"answer": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"mine\.jsonl line 2: missing field 'prompt'"):
        task.load(path)
    path.write_text(json.dumps({"prompt": "a", "choices": ["x", "y"]}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: missing field 'label'"):
        task.load(path)
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n" + json.dumps({"prompt": "a", "choices": ["x", "y"], "label": 1}) + "\n")
    with pytest.raises(ValueError, match="line 2: some lines have 'choices'"):
        task.load(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1: expected a JSON object"):
        task.load(path)
