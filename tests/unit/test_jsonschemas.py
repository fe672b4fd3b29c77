"""A spec's JSON Schemas are data: no network, no backtracking regex, bounded size and cost."""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from slipway.api import jsonschemas


def problem_of(schema: Any) -> str:
    with pytest.raises(jsonschemas.SchemaProblem) as caught:
        jsonschemas.check(schema)
    return str(caught.value)


@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on 127.0.0.1 that serves a schema and counts who asked for it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base's name
            hits.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()
    thread.join()


# --------------------------------------------------------------------------------------------
# References: local only, never fetched


@pytest.mark.parametrize("ref", ["{url}/x.json", "x.json", "{url}/x.json#/definitions/a",
                                 "urn:example:thing"])
def test_a_remote_ref_is_rejected_and_nothing_is_fetched(
    counting_server: tuple[str, list[str]], ref: str,
) -> None:
    url, hits = counting_server
    schema = {"properties": {"a": {"$ref": ref.format(url=url)}}}
    assert "is not local" in problem_of(schema)
    assert "at properties/a/$ref" in problem_of(schema)
    with pytest.raises(jsonschemas.SchemaProblem):
        jsonschemas.compiled(schema)
    assert hits == []


def test_an_id_does_not_turn_a_fragment_into_a_fetch(counting_server: tuple[str, list[str]]
                                                     ) -> None:
    url, hits = counting_server
    schema = {"$id": f"{url}/root.json", "$defs": {"s": {"type": "string"}},
              "properties": {"a": {"$ref": "#/$defs/s"}}}
    compiled = jsonschemas.compiled(schema)
    budget = jsonschemas.Budget(1)
    assert compiled.first_problem({"a": "x"}, budget) is None
    assert compiled.first_problem({"a": 1}, budget) is not None
    assert hits == []


@pytest.mark.parametrize("keyword", ["$dynamicRef", "$recursiveRef"])
def test_dynamic_references_are_rejected(keyword: str) -> None:
    assert "not supported" in problem_of({keyword: "#"})


def test_local_refs_and_anchors_resolve() -> None:
    schema = {"$defs": {"n": {"type": "number"}, "s": {"$anchor": "text", "type": "string"}},
              "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"$ref": "#text"},
                             "c": {"$ref": "#/$defs/n"}}}
    compiled = jsonschemas.compiled(schema)
    budget = jsonschemas.Budget(1)
    assert compiled.first_problem({"a": 1, "b": "x", "c": 2}, budget) is None
    problem = compiled.first_problem({"a": 1, "b": 2}, budget)
    assert problem is not None and problem.json_path() == "$.b"


@pytest.mark.parametrize("schema, message", [
    ({"properties": {"child": {"$ref": "#"}}}, "recursive schemas are not supported"),
    ({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
     "recursive"),
    ({"$ref": "#/$defs/missing"}, "does not resolve"),
    ({"$ref": "#nowhere"}, "does not resolve"),
    ({"enum": ["x"], "$ref": "#/enum/0"}, "not a schema"),
])
def test_refs_that_loop_or_lead_nowhere_are_rejected(schema: Any, message: str) -> None:
    assert message in problem_of(schema)


def test_a_ref_chain_that_doubles_at_every_step_is_rejected() -> None:
    defs: dict[str, Any] = {
        f"a{i}": {"anyOf": [{"$ref": f"#/$defs/a{i + 1}"}, {"$ref": f"#/$defs/a{i + 1}"}]}
        for i in range(30)}
    defs["a30"] = {"type": "integer"}
    assert "expands to more than 5000 subschemas" in problem_of(
        {"$defs": defs, "$ref": "#/$defs/a0"})


def test_a_ref_into_an_unknown_keyword_is_checked_too() -> None:
    schema = {"x-hidden": {"type": "string", "pattern": r"(a)\1"}, "$ref": "#/x-hidden"}
    assert "RE2" in problem_of(schema)


# --------------------------------------------------------------------------------------------
# Patterns: RE2, linear time


def test_a_catastrophic_pattern_is_evaluated_in_linear_time() -> None:
    compiled = jsonschemas.compiled({"type": "string", "pattern": "^(a|aa)+$"})
    budget = jsonschemas.Budget(1)
    # Python's re takes about 8 s for 38 characters and doubles with each one more.
    problem = compiled.first_problem("a" * 100_000 + "!", budget)
    assert problem is not None and "does not match '^(a|aa)+$'" in problem.message
    assert compiled.first_problem("a" * 100_000, budget) is None


@pytest.mark.parametrize("schema", [
    {"pattern": r"(a)\1"}, {"pattern": "(?=a)a"}, {"pattern": "(?<!b)a"},
    {"patternProperties": {r"(x)\1": {}}},
])
def test_patterns_re2_cannot_run_are_rejected(schema: Any) -> None:
    assert "patterns run on RE2" in problem_of(schema)


def test_pattern_properties_and_additional_properties_use_re2() -> None:
    compiled = jsonschemas.compiled({
        "type": "object", "patternProperties": {"^(a|aa)+$": {"type": "integer"}},
        "additionalProperties": False})
    budget = jsonschemas.Budget(1)
    assert compiled.first_problem({"aaaa": 1}, budget) is None
    extra = compiled.first_problem({"a" * 60 + "!": 1}, budget)
    assert extra is not None and "Additional properties are not allowed" in extra.message
    wrong = compiled.first_problem({"aa": "x"}, budget)
    assert wrong is not None and wrong.json_path() == "$.aa"


def test_unevaluated_properties_with_pattern_properties_is_rejected() -> None:
    assert "unevaluatedProperties cannot be combined with patternProperties" in problem_of(
        {"patternProperties": {"^x": {}}, "unevaluatedProperties": False})


def test_format_regex_is_asserted_with_re2() -> None:
    compiled = jsonschemas.compiled({"type": "string", "format": "regex"})
    budget = jsonschemas.Budget(1)
    assert compiled.first_problem("^(a|aa)+$", budget) is None
    assert compiled.first_problem(r"(a)\1", budget) is not None


# --------------------------------------------------------------------------------------------
# Size, depth, drafts


def test_a_schema_over_32_kib_is_rejected() -> None:
    schema = {"enum": ["x" * 1000] * 40}
    assert "at most 32 KiB" in problem_of(schema)


def test_a_schema_nested_too_deeply_is_rejected() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        schema = {"items": schema}
    assert "nests more than 32 levels deep" in problem_of(schema)


def test_an_unknown_schema_draft_is_rejected_and_known_ones_are_used() -> None:
    assert "drafts 4, 6, 7, 2019-09 or 2020-12" in problem_of({"$schema": "http://evil/s"})
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "items": [{"type": "string"}]}
    compiled = jsonschemas.compiled(draft7)  # tuple validation is draft-07's items
    assert compiled.first_problem([1], jsonschemas.Budget(1)) is not None


def test_an_invalid_schema_is_reported_where_it_is() -> None:
    message = problem_of({"properties": {"a": {"type": "banana"}}})
    assert "not a valid JSON Schema" in message and "properties/a/type" in message


@pytest.mark.parametrize("value, problem", [
    ({"a": [1, 2, 3]}, None),
    ("x" * 2000, "is 2.0 KiB as JSON; at most 1 KiB"),
    ([[[[["deep"]]]]], "nests more than 4 levels deep"),
])
def test_free_form_json_is_bounded(value: Any, problem: str | None) -> None:
    assert jsonschemas.json_value_problem(value, max_bytes=1024, max_depth=4) == problem


# --------------------------------------------------------------------------------------------
# uniqueItems, linear


@pytest.mark.parametrize("items, unique", [
    ([1, 1.0], False), ([1, True], True), ([0, False], True), ([None, None], False),
    ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False), ([[1, 2], [2, 1]], True),
    (["1", 1], True), ([{"a": [1.0]}, {"a": [1]}], False),
])
def test_unique_items_follows_json_equality(items: list[Any], unique: bool) -> None:
    compiled = jsonschemas.compiled({"uniqueItems": True})
    assert (compiled.first_problem(items, jsonschemas.Budget(1)) is None) is unique


def test_unique_items_on_many_objects_is_not_quadratic() -> None:
    compiled = jsonschemas.compiled({"uniqueItems": True})
    items = [{"k": i} for i in range(20_000)]
    assert compiled.first_problem(items, jsonschemas.Budget(2)) is None


# --------------------------------------------------------------------------------------------
# The CPU budget


HEAVY = {"type": "array", "items": {"anyOf": [{"const": i} for i in range(1500)]}}


def test_an_evaluation_stops_when_its_budget_is_spent() -> None:
    compiled = jsonschemas.compiled(HEAVY)
    budget = jsonschemas.Budget(0.1)
    with pytest.raises(jsonschemas.BudgetExceeded):
        compiled.first_problem(list(range(2000, 12000)), budget)
    assert budget.remaining <= 0
    with pytest.raises(jsonschemas.BudgetExceeded):  # spent: the next one stops at once
        compiled.first_problem([1], budget)


def test_a_budget_is_shared_and_the_thread_trace_is_put_back() -> None:
    def tracer(frame: Any, event: str, arg: Any) -> None:
        return None

    compiled = jsonschemas.compiled({"type": "integer"})
    budget = jsonschemas.Budget(1.0)
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        for _ in range(3):
            assert compiled.first_problem(1, budget) is None
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
    assert 0 < budget.remaining < 1.0
