"""SQuAD v1.1 (official JSON: data[].title, paragraphs[].context, qas[].id/question/answers[].text).

Metrics are those of the official evaluate-v1.1.py, as fractions in [0, 1]: exact match and token F1 after
normalisation (lowercase, strip punctuation, drop the articles a/an/the, collapse whitespace), each the max
over the gold answers. Only the dev set is public here; ``split_by_title`` splits it by article into
disjoint train/eval parts.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .base import Example, Task, _check_lengths, read_json, require

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric, prediction: str, golds: Sequence[str]) -> float:
    return max(metric(prediction, g) for g in golds)


def squad_prompt(context: str, question: str) -> str:
    return f"Context: {context}\n\nQuestion: {question}\n\nAnswer with a short span copied from the context."


class SquadTask(Task):
    name = "squad"
    kind = "generation"
    default_file = "squad/dev-v1.1.json"
    max_new_tokens = 32

    def _read(self, path: Path) -> list[Example]:
        top = read_json(path)
        if not isinstance(top, dict):
            raise ValueError(f"{path}: expected the SQuAD v1.1 object with a 'data' list")
        data = require(top, "data", str(path))
        examples = []
        for a, article in enumerate(data):
            where_a = f"{path} data[{a}]"
            title = require(article, "title", where_a)
            for p, para in enumerate(require(article, "paragraphs", where_a)):
                where_p = f"{where_a}.paragraphs[{p}]"
                context = require(para, "context", where_p)
                for q, qa in enumerate(require(para, "qas", where_p)):
                    where = f"{where_p}.qas[{q}]"
                    golds = [require(ans, "text", where) for ans in require(qa, "answers", where)]
                    if not golds:
                        raise ValueError(f"{where}: empty 'answers'")
                    examples.append(
                        Example(
                            id=str(require(qa, "id", where)),
                            prompt=squad_prompt(context, require(qa, "question", where)),
                            answer=golds[0],
                            meta={"title": title, "answers": golds},
                        )
                    )
        return examples

    def is_correct(self, prediction: str, example: Example) -> bool:
        return max_over_golds(exact_match, prediction, example.meta["answers"]) == 1.0

    def score(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict:
        _check_lengths(predictions, examples)
        n = len(examples)
        if not n:
            return {"exact_match": 0.0, "f1": 0.0}
        em = sum(max_over_golds(exact_match, p, e.meta["answers"]) for p, e in zip(predictions, examples))
        f = sum(max_over_golds(f1, p, e.meta["answers"]) for p, e in zip(predictions, examples))
        return {"exact_match": em / n, "f1": f / n}


def split_by_title(
    examples: Sequence[Example], eval_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split SQuAD examples by article title into (train, eval); no article is in both.

    Titles are sorted, shuffled with ``random.Random(seed)`` and the first ``round(eval_fraction * n)``
    (at least 1 and at most n-1 when there are 2+ titles) go to eval. Example order is kept.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    titles = sorted({e.meta["title"] for e in examples})
    random.Random(seed).shuffle(titles)
    n_eval = min(max(round(eval_fraction * len(titles)), 1), max(len(titles) - 1, 1))
    eval_titles = set(titles[:n_eval])
    train = [e for e in examples if e.meta["title"] not in eval_titles]
    evals = [e for e in examples if e.meta["title"] in eval_titles]
    return train, evals


SQUAD = SquadTask()
