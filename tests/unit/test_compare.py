"""Tolerance and agreement rules, table-driven."""

from __future__ import annotations

import math
from typing import Any

import pytest

from slipway.logic import compare
from slipway.logic.compare import MISSING, Tolerance

ABS = Tolerance(absolute=0.01)
REL = Tolerance(relative=0.05)
EXACT = compare.EXACT

# (id, left, right, tolerance, agree)
VALUES: list[tuple[str, Any, Any, Tolerance, bool]] = [
    ("equal numbers", 0.97, 0.97, EXACT, True),
    ("int and float of the same value", 1, 1.0, EXACT, True),
    ("plus and minus zero", 0.0, -0.0, EXACT, True),
    ("minus zero and int zero", -0.0, 0, EXACT, True),
    ("close numbers, exact", 0.97, 0.971, EXACT, False),
    ("within the absolute tolerance", 0.97, 0.979, ABS, True),
    ("at the absolute tolerance", 1.0, 1.01, Tolerance(absolute=0.011), True),
    ("beyond the absolute tolerance", 0.97, 0.99, ABS, False),
    ("within the relative tolerance", 100, 104.9, REL, True),
    ("beyond the relative tolerance", 100, 106, REL, False),
    ("relative tolerance near zero needs an absolute one", 1e-9, 2e-9, REL, False),
    ("either tolerance may hold", 1e-9, 2e-9, Tolerance(absolute=1e-6, relative=0.05), True),
    ("NaN agrees with nothing", math.nan, 0.5, ABS, False),
    ("NaN is not even NaN", math.nan, math.nan, ABS, False),
    ("the same infinity", math.inf, math.inf, ABS, True),
    ("opposite infinities", math.inf, -math.inf, Tolerance(absolute=1e300), False),
    ("infinity and a big number", math.inf, 1e308, Tolerance(relative=1.0), False),
    ("true is not 1", True, 1, ABS, False),
    ("false is not 0", False, 0.0, ABS, False),
    ("booleans exact", True, True, EXACT, True),
    ("strings stay exact under a tolerance", "setosa", "Setosa", ABS, False),
    ("null and null", None, None, EXACT, True),
    ("null is not 0", None, 0, ABS, False),
    ("a number is not its string", 1, "1", ABS, False),
    ("arrays element by element", [0.1, 0.2], [0.1, 0.205], ABS, True),
    ("arrays of different lengths", [0.1, 0.2], [0.1, 0.2, 0.3], ABS, False),
    ("nested arrays", [[1, 2], [3, 4]], [[1, 2], [3, 4.001]], ABS, True),
    ("objects key by key", {"label": "a", "p": 0.5}, {"label": "a", "p": 0.505}, ABS, True),
    ("objects with other keys", {"label": "a"}, {"label": "a", "p": 1}, ABS, False),
    ("a label differs inside an object", {"label": "a", "p": 0.5}, {"label": "b", "p": 0.5},
     ABS, False),
]


@pytest.mark.parametrize(("left", "right", "tolerance", "agree"),
                         [case[1:] for case in VALUES], ids=[case[0] for case in VALUES])
def test_values_agree_by_the_rules(left: Any, right: Any, tolerance: Tolerance,
                                   agree: bool) -> None:
    assert (compare.difference(left, right, tolerance) is None) is agree
    assert (compare.difference(right, left, tolerance) is None) is agree  # symmetric


def test_a_difference_names_where_it_is() -> None:
    assert compare.difference({"p": [0.1, {"q": 0.5}]}, {"p": [0.1, {"q": 0.7}]}, ABS) == \
        ".p[1].q: 0.5 vs 0.7"
    assert compare.difference([1, 2], [1], ABS) == "value: 2 items vs 1"


PREDICTIONS = [{"label": "setosa", "p": 0.97}, {"label": "versicolor", "p": 0.8},
               {"label": "virginica", "p": 0.9}]
SWAPPED = [{"label": "setosa", "p": 0.97}, {"label": "virginica", "p": 0.8},
           {"label": "versicolor", "p": 0.9}]

# (id, new, serving, tolerance, agreeing, total)
ITEMS: list[tuple[str, Any, Any, Tolerance, int, int]] = [
    ("every instance agrees", PREDICTIONS, PREDICTIONS, EXACT, 3, 3),
    ("two labels swapped", SWAPPED, PREDICTIONS, EXACT, 1, 3),
    ("scores within tolerance", [{"label": "setosa", "p": 0.975}],
     [{"label": "setosa", "p": 0.97}], ABS, 1, 1),
    ("scores beyond tolerance", [{"label": "setosa", "p": 0.9}],
     [{"label": "setosa", "p": 0.97}], ABS, 0, 1),
    ("a shorter answer: the missing items disagree", PREDICTIONS[:1], PREDICTIONS, EXACT, 1, 3),
    ("a longer answer: the extra items disagree", PREDICTIONS, PREDICTIONS[:2], EXACT, 2, 3),
    ("a scalar is one item", "setosa", "setosa", EXACT, 1, 1),
    ("a path missing in the new answer", MISSING, PREDICTIONS, EXACT, 0, 1),
    ("a path missing in the serving answer", PREDICTIONS, MISSING, EXACT, 0, 1),
    ("an array against a scalar is one item that differs", PREDICTIONS, "setosa", EXACT, 0, 1),
]


@pytest.mark.parametrize(("new", "serving", "tolerance", "agreeing", "total"),
                         [case[1:] for case in ITEMS], ids=[case[0] for case in ITEMS])
def test_agreement_counts_items(new: Any, serving: Any, tolerance: Tolerance, agreeing: int,
                                total: int) -> None:
    tally = compare.Agreement()
    tally.add("batch", "$.predictions", new, serving, tolerance)
    assert (tally.agreeing, tally.total) == (agreeing, total)
    assert len(tally.disagreements) == total - agreeing


def test_the_summary_names_paths_values_and_the_rate() -> None:
    tally = compare.Agreement()
    tally.add("batch", "$.predictions", SWAPPED, PREDICTIONS)
    text = tally.summary(1.0, "pod/iris-v1")
    assert text.startswith("1 of 3 compared items agree with pod/iris-v1 (33.3 %, at least "
                           "100 % wanted): ")
    assert "test 'batch' $.predictions[1]: .label: 'virginica' vs 'versicolor'" in text
    assert "$.predictions[2]" in text
    assert compare.Agreement().rate == 1.0  # nothing compared: nothing disagreed
