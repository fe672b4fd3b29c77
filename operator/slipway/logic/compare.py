"""Comparing JSON answers: exactly, or numbers within a tolerance; and agreement between two
revisions' answers. Pure.

Rules (the same for an expected value and for two answers):

- ``true`` is not ``1``; ``1`` is ``1.0``; ``-0.0`` is ``0``;
- with a tolerance, two numbers agree when ``|a - b| <= max(absolute, relative * max(|a|, |b|))``
  (``math.isclose``); NaN agrees with nothing (not even NaN: a model that answers NaN is broken),
  an infinity only with the same infinity;
- strings, booleans and null are compared exactly, tolerance or not; arrays element by element
  (their lengths must be equal), objects key by key (the same keys).

Agreement counts *items*: where a path leads to an array (``$.predictions``), each element is
one item; anywhere else, the value is one item. An item missing on either side disagrees. The
rate is agreeing items over all items, over every test and path compared.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Tolerance:
    absolute: float = 0.0
    relative: float = 0.0


EXACT = Tolerance()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numbers_agree(left: float, right: float, tolerance: Tolerance = EXACT) -> bool:
    if math.isnan(left) or math.isnan(right):
        return False
    if math.isinf(left) or math.isinf(right):
        return left == right
    if left == right:
        return True
    return math.isclose(left, right, rel_tol=tolerance.relative, abs_tol=tolerance.absolute)


def difference(left: Any, right: Any, tolerance: Tolerance = EXACT, where: str = "") -> str | None:
    """None when the two JSON values agree; otherwise where and how they first differ (a path
    relative to the compared value, "" for the value itself)."""
    if _is_number(left) and _is_number(right):
        if numbers_agree(float(left), float(right), tolerance):
            return None
        return f"{where or 'value'}: {_show(left)} vs {_show(right)}"
    if isinstance(left, list) and isinstance(right, list):
        if len(left) != len(right):
            return f"{where or 'value'}: {len(left)} items vs {len(right)}"
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            found = difference(a, b, tolerance, f"{where}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(left, dict) and isinstance(right, dict):
        if left.keys() != right.keys():
            only = sorted(set(left) ^ set(right))[:3]
            return f"{where or 'value'}: keys differ ({', '.join(map(repr, only))})"
        for key in sorted(left):
            found = difference(left[key], right[key], tolerance, f"{where}.{key}")
            if found is not None:
                return found
        return None
    if type(left) is type(right) and left == right and not _is_number(left):
        return None
    return f"{where or 'value'}: {_show(left)} vs {_show(right)}"


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:79] + "…"


MISSING = object()  # a path that does not exist in an answer


@dataclasses.dataclass(frozen=True)
class Disagreement:
    test: str
    path: str  # the path compared, with the item's index when it is an array's element
    detail: str


@dataclasses.dataclass
class Agreement:
    agreeing: int = 0
    total: int = 0
    disagreements: list[Disagreement] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.agreeing / self.total if self.total else 1.0

    def add(self, test: str, path: str, new: Any, serving: Any,
            tolerance: Tolerance = EXACT) -> None:
        """Compare one path of one test's two answers (MISSING where the path is absent)."""
        if isinstance(new, list) and isinstance(serving, list):
            for index in range(max(len(new), len(serving))):
                a = new[index] if index < len(new) else MISSING
                b = serving[index] if index < len(serving) else MISSING
                self._one(test, f"{path}[{index}]", a, b, tolerance)
        else:
            self._one(test, path, new, serving, tolerance)

    def _one(self, test: str, path: str, new: Any, serving: Any, tolerance: Tolerance) -> None:
        self.total += 1
        if new is MISSING or serving is MISSING:
            side = "this revision's answer" if new is MISSING else "the serving revision's"
            self.disagreements.append(Disagreement(test, path, f"missing in {side}"))
            return
        found = difference(new, serving, tolerance)
        if found is None:
            self.agreeing += 1
            return
        detail = found.removeprefix("value: ") if found.startswith("value: ") else found
        self.disagreements.append(Disagreement(test, path, detail))

    def summary(self, min_rate: float, serving: str, limit: int = 3) -> str:
        """"1 of 3 answers agree with … (33 %, at least 100 % wanted): …"."""
        head = (f"{self.agreeing} of {self.total} compared item{'' if self.total == 1 else 's'} "
                f"agree with {serving} ({_percent(self.rate)}, at least {_percent(min_rate)} "
                "wanted)")
        if not self.disagreements:
            return head
        shown = "; ".join(f"test {d.test!r} {d.path}: {d.detail} (this revision vs serving)"
                          for d in self.disagreements[:limit])
        more = len(self.disagreements) - limit
        return head + ": " + shown + (f"; and {more} more" if more > 0 else "")


def _percent(rate: float) -> str:
    value = rate * 100
    return f"{value:.0f} %" if value == round(value) else f"{value:.1f} %"
