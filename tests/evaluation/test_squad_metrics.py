"""SQuAD v1.1's official exact match / F1 (used by the local lm-eval ``squad`` task)."""

from __future__ import annotations

import pytest

from paratune.evaluation.squad_metrics import exact_match, f1, max_over_golds, normalize_answer


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
