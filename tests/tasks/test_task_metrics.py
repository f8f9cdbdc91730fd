"""Metrics: SQuAD exact match / F1, GSM8K final-number parsing, task-level scores."""

from __future__ import annotations

import pytest

from paratune.tasks import Example, get_task
from paratune.tasks.gsm8k import parse_number
from paratune.tasks.squad import exact_match, f1, max_over_golds, normalize_answer


def test_squad_normalisation():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("  An  apple, a   day ") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_squad_exact_match():
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower in Paris", "eiffel tower") == 0.0


def test_squad_f1_by_hand():
    # pred tokens [eiffel, tower, in, paris], gold [eiffel, tower]: P = 2/4, R = 2/2, F1 = 2PR/(P+R) = 2/3
    assert f1("the Eiffel Tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3, abs=1e-12)
    # pred [paris, france], gold [city, of, paris]: 1 common, P = 1/2, R = 1/3, F1 = 2/5
    assert f1("Paris, France", "the city of Paris") == pytest.approx(0.4, abs=1e-12)
    assert f1("London", "Paris") == 0.0
    # repeated tokens count with multiplicity: pred [a1, a1, b], gold [a1, b, b] -> common 2, P = R = 2/3
    assert f1("x x y", "x y y") == pytest.approx(2 / 3, abs=1e-12)
    assert max_over_golds(f1, "Paris, France", ["London", "the city of Paris", "Paris"]) == pytest.approx(2 / 3)


def test_squad_task_score_max_over_golds():
    task = get_task("squad")
    ex = [
        Example(id="a", prompt="", answer="Denver Broncos", meta={"answers": ["Denver Broncos", "the Broncos"]}),
        Example(id="b", prompt="", answer="1889", meta={"answers": ["1889"]}),
    ]
    scores = task.score(["Broncos", "in 1889"], ex)
    # a: vs "Denver Broncos" EM 0, F1 P=1 R=1/2 -> 2/3; vs "the Broncos" (-> "broncos") EM 1, F1 1 -> max 1, 1
    # b: EM 0; F1 pred [in, 1889] gold [1889]: P=1/2 R=1 -> 2/3
    assert scores["exact_match"] == 0.5
    assert scores["f1"] == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-12)
    scores = task.score(["Denver", "1889"], ex)  # a: EM 0, F1 max(2/3, 0) ; b: EM 1, F1 1
    assert scores == {"exact_match": 0.5, "f1": pytest.approx((2 / 3 + 1.0) / 2, abs=1e-12)}
    assert task.score(["the broncos.", "1889"], ex) == {"exact_match": 1.0, "f1": 1.0}
    assert task.is_correct("The Broncos", ex[0]) and not task.is_correct("Broncos won", ex[0])


@pytest.mark.parametrize(
    "text, expected",
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", 18),
        ("#### 1,234", 1234),
        ("The total is $5.00.", 5),
        ("So the answer is 42. I hope this helps! Let me know.", 42),
        ("It costs 3 dollars, then 1,000,000 more, so 1,000,003 in total.", 1000003),
        ("The temperature fell to -7 degrees", -7),
        ("#### 12\n\nNext question: what is 5 + 6?", 12),  # "####" marks the final answer
        ("half is 0.5", 0.5),
        ("no number here", None),
    ],
)
def test_gsm8k_parse_number(text, expected):
    assert parse_number(text) == expected


def test_gsm8k_score():
    task = get_task("gsm8k")
    ex = [Example(id=str(i), prompt="q", answer=f"#### {t}", meta={"target": t}) for i, t in enumerate([18, 1234, 5])]
    assert task.score(["The answer is 18.", "#### 1,234.00", "I don't know"], ex) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="2 predictions for 3 examples"):
        task.score(["1", "2"], ex)


def test_multiple_choice_score():
    task = get_task("copa")
    ex = [Example(id=str(i), prompt="p", answer="x", choices=["x", "y"], label=i % 2) for i in range(4)]
    assert task.score([0, 1, 1, 1], ex) == {"accuracy": 0.75}
