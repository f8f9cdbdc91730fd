"""Document converters and metrics used by the rendered lm-eval task YAMLs (``!function utils.<name>``).

The LLM-Adapters files of the local data layout (ARC-Easy, OpenBookQA, Social IQa, WinoGrande) hold each item as
an alpaca record whose ``instruction`` embeds the question and the options ("... question: <q>\\n\\nAnswer1: <a>
Answer2: <b> ...\\n\\nAnswer format: answer1/answer2/..."). ``parse_alpaca_choice`` recovers the question, the
option texts and the gold index, so the tasks can be scored in lm-eval's cloze formulation (the option *text*
after the question), not by the "answerN" labels. The hub data sets lm-eval reads for the same tasks are mapped
to the same fields (``process_arc`` ...), so one formulation serves both sources.
"""

from __future__ import annotations

import re

_FORMAT_RE = re.compile(r"\s*Answer format:\s*(\S+)\s*$")
_QUESTION_PREFIXES = (
    "Please choose the correct answer to fill in the blank to complete the given sentence: ",
    "Please choose the correct answer to the question: ",
)


def parse_alpaca_choice(record: dict, label_word: str = "Answer") -> dict:
    """{"question", "choices", "gold"} from an LLM-Adapters multiple-choice record.

    ``label_word`` is "Answer" (ARC, OpenBookQA, Social IQa) or "Option" (WinoGrande). Raises ValueError when
    the record does not have that shape (so a changed file cannot be scored silently wrong)."""
    instruction = record["instruction"]
    m = _FORMAT_RE.search(instruction)
    if not m:
        raise ValueError(f"no 'Answer format:' line in {instruction[:80]!r}")
    labels = m.group(1).split("/")
    body = instruction[: m.start()]
    for prefix in _QUESTION_PREFIXES:
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    else:
        raise ValueError(f"unknown instruction prefix in {instruction[:80]!r}")
    pattern = re.compile(rf"\s*\b{label_word}(\d+):\s*")
    parts = pattern.split(body)
    question, rest = parts[0].strip(), parts[1:]
    numbers = [int(n) for n in rest[0::2]]
    texts = [t.strip() for t in rest[1::2]]
    if numbers != list(range(1, len(labels) + 1)):
        raise ValueError(f"options {numbers} do not match the answer format {labels} in {instruction[:80]!r}")
    answer = record["answer"]
    if answer not in labels:
        raise ValueError(f"answer {answer!r} is not one of {labels}")
    return {"question": question, "choices": texts, "gold": labels.index(answer)}


def _convert(dataset, label_word: str):
    def one(record):
        parsed = parse_alpaca_choice(record, label_word)
        return {"question": parsed["question"], "choices": parsed["choices"], "gold": parsed["gold"]}

    return dataset.map(one, remove_columns=dataset.column_names)


def process_alpaca_answers(dataset):
    """ARC-Easy, OpenBookQA, Social IQa: question, choices (option texts), gold."""
    return _convert(dataset, "Answer")


def process_arc(dataset):
    """ARC rows of allenai/ai2_arc: as lm-eval's arc_easy reads them (options = choices.text)."""
    return dataset.map(lambda r: {"question": r["question"], "choices": r["choices"]["text"],
                                  "gold": r["choices"]["label"].index(r["answerKey"])},
                       remove_columns=dataset.column_names)


def process_openbookqa(dataset):
    """allenai/openbookqa rows: question_stem, choices.text, answerKey (as lm-eval's openbookqa)."""
    return dataset.map(lambda r: {"question": r["question_stem"], "choices": r["choices"]["text"],
                                  "gold": r["choices"]["label"].index(r["answerKey"].lstrip())},
                       remove_columns=dataset.column_names)


def process_siqa(dataset):
    """lighteval/siqa rows: "Q: {context} {question}" with answerA..C and label "1".."3" (as lm-eval's social_iqa)."""
    return dataset.map(lambda r: {"question": f"{r['context']} {r['question']}",
                                  "choices": [r["answerA"], r["answerB"], r["answerC"]], "gold": int(r["label"]) - 1},
                       remove_columns=dataset.column_names)


def process_winogrande(dataset):
    """WinoGrande: sentence (with the "_" blank), option1, option2, answer ("1"/"2"), as lm-eval's winogrande."""

    def one(record):
        parsed = parse_alpaca_choice(record, "Option")
        if parsed["question"].count("_") != 1 or len(parsed["choices"]) != 2:
            raise ValueError(f"not a WinoGrande item: {record['instruction'][:80]!r}")
        return {"sentence": parsed["question"], "option1": parsed["choices"][0], "option2": parsed["choices"][1],
                "answer": str(parsed["gold"] + 1)}

    return dataset.map(one, remove_columns=dataset.column_names)


# ----- WinoGrande partial scoring, as lm-eval's tasks/winogrande/preprocess_winogrande.py ------------------
def winogrande_doc_to_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


# ----- COPA, as lm-eval's tasks/super_glue/copa/utils.py ----------------------------------------------------
def _copa_choice(choice: str) -> str:
    return choice[0].lower() + choice[1:]


def copa_doc_to_text(doc):
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"


def copa_doc_to_target(doc):
    return " " + _copa_choice(doc["choice1"] if doc["label"] == 0 else doc["choice2"])


def copa_doc_to_choice(doc):
    return [" " + _copa_choice(doc["choice1"]), " " + _copa_choice(doc["choice2"])]


# ----- SQuAD v1.1 (official JSON) ---------------------------------------------------------------------------
def process_squad(dataset):
    """Articles (title, paragraphs) -> one row per question: id, title, context, question, answers."""
    import datasets

    rows = []
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows.append({"id": qa["id"], "title": article["title"], "context": paragraph["context"],
                             "question": qa["question"], "answers": [a["text"] for a in qa["answers"]]})
    return datasets.Dataset.from_list(rows)


def process_squad_rows(dataset):
    """rajpurkar/squad rows (answers = {"text": [...], "answer_start": [...]}) -> the fields of ``process_squad``."""
    import datasets

    return datasets.Dataset.from_list([{"id": r["id"], "title": r["title"], "context": r["context"],
                                        "question": r["question"], "answers": list(r["answers"]["text"])}
                                       for r in dataset])


def squad_process_results(doc, results):
    """Official SQuAD v1.1 exact match and F1 (fractions in [0, 1]), max over the gold answers."""
    from .squad_metrics import exact_match, f1, max_over_golds

    prediction = results[0].strip()
    return {"exact_match": max_over_golds(exact_match, prediction, doc["answers"]),
            "f1": max_over_golds(f1, prediction, doc["answers"])}
