"""The JSON Schemas of a spec, handled as data: never code, never the network, bounded in cost.

``spec.schema`` and a test's ``expect.bodySchema`` are written by whoever may create a
ModelDeployment, and the operator evaluates them on every smoke-test body and every answer of a
model server (both theirs too), inside the process that serves every other tenant. Left to
itself, jsonschema would fetch a remote ``$ref`` from the operator's network position, run
``pattern`` with Python's backtracking ``re`` (``^(a|aa)+$`` on forty characters holds the GIL
for minutes), compare ``uniqueItems`` pairwise, and follow ``$ref`` chains that double at every
step. So here:

- only local references resolve (``#``, ``#/json/pointer``, ``#anchor``), from an empty registry
  that has nothing to retrieve; a remote or dynamic reference is an error that names its place;
- ``pattern``, ``patternProperties`` (and so ``additionalProperties``) and ``format: regex`` run
  on RE2, in linear time; a pattern RE2 cannot run (backreferences, lookaround) is an error;
- ``uniqueItems`` compares canonical JSON in n log n;
- a schema is at most ``MAX_BYTES`` long and ``MAX_DEPTH`` deep, has no ``$ref`` cycle, and
  expands to at most ``MAX_EXPANDED`` subschemas with its references followed;
- every evaluation runs on a CPU budget (this thread's CPU time, checked as Python calls
  happen), so whatever stays costly stops in time, reported as such.

Pure: RE2, jsonschema and referencing, no I/O.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import inspect
import json
import reprlib
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from types import FrameType
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import re2
import referencing

MAX_BYTES = 32 * 1024  # one schema, as compact JSON
MAX_DEPTH = 32  # nesting of objects and arrays in one schema
MAX_EXPANDED = 5000  # subschemas once every $ref is followed
MAX_REF_DEPTH = 64  # schemas nested inside one another, counting each $ref hop as a level

# Schema versions a spec may name in "$schema" (draft 2020-12 when it names none).
DRAFTS: dict[str, type[jsonschema.protocols.Validator]] = {}
for _cls in (jsonschema.Draft202012Validator, jsonschema.Draft201909Validator,
             jsonschema.Draft7Validator, jsonschema.Draft6Validator, jsonschema.Draft4Validator):
    _uri = str(_cls.META_SCHEMA.get("$id") or _cls.META_SCHEMA.get("id"))
    DRAFTS[_uri] = DRAFTS[_uri.rstrip("#")] = DRAFTS[_uri.rstrip("#") + "#"] = _cls
DEFAULT_DRAFT = jsonschema.Draft202012Validator

# Where a keyword's value is itself a schema (a list of them, or a map of them).
_ONE = frozenset({"additionalItems", "additionalProperties", "contains", "propertyNames", "if",
                  "then", "else", "not", "unevaluatedItems", "unevaluatedProperties", "items"})
_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                  "dependencies"})
_DATA = frozenset({"const", "enum", "default", "examples"})  # values here are data, not schemas


class SchemaProblem(ValueError):
    """A schema Slipway will not evaluate; ``where`` is its place, "/"-separated."""

    def __init__(self, where: str, message: str) -> None:
        where = where or "(root)"
        if len(where) > 200:
            where = "…" + where[-199:]
        super().__init__(f"{message} at {where}")
        self.where = where
        self.message = message


class BudgetExceeded(Exception):
    """An evaluation used up its CPU budget."""


# --------------------------------------------------------------------------------------------
# RE2


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the error is ours to report, not absl's to print on stderr
    return options


_OPTIONS = _re2_options()


@functools.lru_cache(maxsize=512)
def regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (raises re2.error for one RE2 cannot run)."""
    return re2.compile(pattern, _OPTIONS)


def regex_problem(pattern: str) -> str | None:
    try:
        regex(pattern)
    except re2.error as error:
        return (f"pattern {_short(pattern)} is not supported: patterns run on RE2, in linear "
                f"time, which has no backreferences or lookaround ({_short(str(error))})")
    return None


def _short(text: str, limit: int = 120) -> str:
    text = repr(text) if not text.startswith("'") else text
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# Checking a schema before it is ever evaluated


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact JSON (UTF-8)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of objects and arrays, counted up to ``limit + 1`` at most."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def json_value_problem(value: Any, *, max_bytes: int, max_depth: int) -> str | None:
    """Why a free-form JSON value is too big, or None (the bounds a spec's free JSON keeps)."""
    if json_depth(value, max_depth) > max_depth:
        return f"nests more than {max_depth} levels deep"
    size = json_size(value)
    if size > max_bytes:
        return f"is {_kib(size)} as JSON; at most {_kib(max_bytes)}"
    return None


def _kib(count: int) -> str:
    return f"{count / 1024:.1f} KiB" if count % 1024 else f"{count // 1024} KiB"


def _children(node: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The subschemas of a schema node, with their places relative to it."""
    for key, value in node.items():
        if key in _DATA:
            continue
        if key in _LIST and isinstance(value, list):
            for index, item in enumerate(value):
                yield f"{key}/{index}", item
        elif key in _MAP and isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, (dict, bool)):
                    yield f"{key}/{name}", item
        elif key in _ONE and isinstance(value, (dict, bool)):
            yield key, value


def _anchors(root: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in ("$anchor", "$dynamicAnchor"):
                if isinstance(node.get(key), str):
                    found.setdefault(node[key], node)
            stack.extend(child for _, child in _children(node))
    return found


def _resolve(root: Any, anchors: dict[str, Any], ref: str) -> Any:
    fragment = ref[1:]
    if not fragment:
        return root
    if not fragment.startswith("/"):
        if fragment in anchors:
            return anchors[fragment]
        raise LookupError(f"no $anchor {fragment!r}")
    node = root
    for part in fragment[1:].split("/"):
        part = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError(f"nothing at {part!r}")
    return node


class _Walk:
    """One pass over a schema and everything its references reach."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.anchors = _anchors(root)
        self.counts: dict[int, int] = {}
        self.open: set[int] = set()
        self.unevaluated = False
        self.pattern_properties = False

    def count(self, node: Any, where: str, depth: int) -> int:
        if not isinstance(node, dict):
            return 1
        key = id(node)
        if key in self.counts:
            return self.counts[key]
        if key in self.open:
            raise SchemaProblem(where, "a $ref leads back to a schema that contains it; "
                                "recursive schemas are not supported")
        if depth > MAX_REF_DEPTH:
            raise SchemaProblem(where, f"schemas nest more than {MAX_REF_DEPTH} levels deep "
                                "with their $refs followed")
        self.open.add(key)
        self._check(node, where)
        total = 1
        for place, child in _children(node):
            total += self.count(child, f"{where}/{place}".lstrip("/"), depth + 1)
        ref = node.get("$ref")
        if isinstance(ref, str):
            try:
                target = _resolve(self.root, self.anchors, ref)
            except LookupError as error:
                raise SchemaProblem(f"{where}/$ref".lstrip("/"),
                                    f"$ref {_short(ref)} does not resolve ({error})") from None
            if not isinstance(target, (dict, bool)):
                raise SchemaProblem(f"{where}/$ref".lstrip("/"),
                                    f"$ref {_short(ref)} points to something that is not a schema")
            total += self.count(target, f"{where}/$ref".lstrip("/"), depth + 1)
        self.open.discard(key)
        self.counts[key] = total
        if total > MAX_EXPANDED:
            raise SchemaProblem(where, f"expands to more than {MAX_EXPANDED} subschemas once its "
                                "$refs are followed")
        return total

    def _check(self, node: dict[str, Any], where: str) -> None:
        def at(key: str) -> str:
            return f"{where}/{key}".lstrip("/")

        for key in ("$ref", "$dynamicRef", "$recursiveRef"):
            if key not in node:
                continue
            value = node[key]
            if key != "$ref":
                raise SchemaProblem(at(key), f"{key} is not supported (no dynamic references)")
            if not isinstance(value, str) or not value.startswith("#"):
                raise SchemaProblem(at(key), f"$ref {_short(str(value))} is not local: only "
                                    "references inside the schema ('#', '#/$defs/…', '#anchor') "
                                    "are followed, nothing is fetched")
        if "$schema" in node and node["$schema"] not in DRAFTS:
            raise SchemaProblem(at("$schema"), f"$schema {_short(str(node['$schema']))} is not "
                                "one of the JSON Schema drafts 4, 6, 7, 2019-09 or 2020-12")
        pattern = node.get("pattern")
        if isinstance(pattern, str):
            problem = regex_problem(pattern)
            if problem:
                raise SchemaProblem(at("pattern"), problem)
        properties = node.get("patternProperties")
        if isinstance(properties, dict):
            self.pattern_properties = True
            for name in properties:
                problem = regex_problem(name)
                if problem:
                    raise SchemaProblem(at(f"patternProperties/{name}"), problem)
        if "unevaluatedProperties" in node:
            self.unevaluated = True


def check(schema: Any) -> None:
    """Raise SchemaProblem if ``schema`` is not one Slipway evaluates (see the module doc)."""
    if not isinstance(schema, (dict, bool)):
        raise SchemaProblem("", "a JSON Schema must be an object or a boolean")
    if json_depth(schema, MAX_DEPTH) > MAX_DEPTH:
        raise SchemaProblem("", f"nests more than {MAX_DEPTH} levels deep")
    size = json_size(schema)
    if size > MAX_BYTES:
        raise SchemaProblem("", f"is {_kib(size)} as JSON; at most {_kib(MAX_BYTES)}")
    walk = _Walk(schema)
    walk.count(schema, "", 1)
    if walk.unevaluated and walk.pattern_properties:
        raise SchemaProblem("", "unevaluatedProperties cannot be combined with patternProperties "
                            "(jsonschema would run those patterns on a backtracking engine)")
    cls: Any = draft_of(schema)  # the protocol's check_schema lacks format_checker
    try:
        cls.check_schema(schema, format_checker=FORMATS)
    except jsonschema.exceptions.SchemaError as error:
        where = "/".join(str(p) for p in error.absolute_path)
        raise SchemaProblem(where, f"not a valid JSON Schema: {error.message}") from None


def draft_of(schema: Any) -> type[jsonschema.protocols.Validator]:
    uri = schema.get("$schema") if isinstance(schema, dict) else None
    return DRAFTS.get(uri, DEFAULT_DRAFT) if isinstance(uri, str) else DEFAULT_DRAFT


# --------------------------------------------------------------------------------------------
# Evaluating: jsonschema's validators with RE2 and a linear uniqueItems

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = 6


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("regex", raises=re2.error)
def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        regex(instance)
    return True


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any
             ) -> Iterator[jsonschema.exceptions.ValidationError]:
    if validator.is_type(instance, "string") and not regex(pattern).search(instance):
        yield jsonschema.exceptions.ValidationError(
            f"{_REPR.repr(instance)} does not match {_REPR.repr(pattern)}")


def _pattern_properties(validator: Any, properties: dict[str, Any], instance: Any, schema: Any
                        ) -> Iterator[jsonschema.exceptions.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        compiled = regex(pattern)
        for name, value in instance.items():
            if compiled.search(name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties") or {}
    patterns = [regex(p) for p in schema.get("patternProperties") or {}]
    return [name for name in instance if name not in properties
            and not any(compiled.search(name) for compiled in patterns)]


def _additional_properties(validator: Any, additional: Any, instance: Any, schema: Any
                           ) -> Iterator[jsonschema.exceptions.ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(additional, "object"):
        for name in extras:
            yield from validator.descend(instance[name], additional, path=name)
    elif not additional and extras:
        listed = ", ".join(repr(name) for name in sorted(extras)[:10])
        verb = "was" if len(extras) == 1 else "were"
        yield jsonschema.exceptions.ValidationError(
            f"Additional properties are not allowed ({listed} {verb} unexpected)")


def canonical(value: Any) -> Any:
    """A hashable form in which JSON values are equal exactly when JSON Schema says so
    (1 == 1.0, true != 1, objects compared without order)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", int(value) if isinstance(value, float) and value.is_integer() else value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("a", tuple(canonical(item) for item in value))
    if isinstance(value, dict):
        return ("o", tuple(sorted((key, canonical(item)) for key, item in value.items())))
    return ("z", None)


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any
                  ) -> Iterator[jsonschema.exceptions.ValidationError]:
    if unique and validator.is_type(instance, "array"):
        seen: set[Any] = set()
        for item in instance:
            key = canonical(item)
            if key in seen:
                yield jsonschema.exceptions.ValidationError(
                    f"{_REPR.repr(instance)} has non-unique elements")
                return
            seen.add(key)


_OVERRIDES = {"pattern": _pattern, "patternProperties": _pattern_properties,
              "additionalProperties": _additional_properties, "uniqueItems": _unique_items}


@functools.cache
def _safe(draft: type[jsonschema.protocols.Validator]) -> Any:
    return jsonschema.validators.extend(draft, _OVERRIDES)


_EMPTY_REGISTRY: referencing.Registry[Any] = referencing.Registry()


# --------------------------------------------------------------------------------------------
# The CPU budget


_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR
_EVALUATORS = ("jsonschema", "referencing", "rpds", __name__)  # the code a budget may stop


class Budget:
    """CPU seconds an evaluation may spend, shared by the evaluations that draw on it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.remaining = seconds

    @contextlib.contextmanager
    def spend(self) -> Iterator[None]:
        """Run the block on what is left; BudgetExceeded once it is used up.

        Checked through a trace function on each Python call (jsonschema is Python all the
        way down, and RE2 runs in linear time), so the block stops within a few calls of the
        limit. The trace is this thread's alone and is put back as it was.
        """
        if self.remaining <= 0:
            raise BudgetExceeded
        started = time.thread_time()
        limit = started + self.remaining
        calls = 0
        exceeded = False

        def trace(frame: FrameType, event: str, arg: Any) -> None:
            nonlocal calls, exceeded
            calls += 1
            if exceeded or (calls % 32 == 0 and time.thread_time() > limit):
                exceeded = True
                # Raised in the evaluator's own plain function calls only: a generator's frame
                # may be one being closed, and other code (a finaliser the garbage collector
                # runs meanwhile) is not ours to interrupt; Python would ignore and print the
                # exception there. From then on every such call raises, and the block's end
                # raises too.
                if not frame.f_code.co_flags & _GENERATOR_FLAGS and \
                        str(frame.f_globals.get("__name__", "")).startswith(_EVALUATORS):
                    raise BudgetExceeded
            return None

        previous = sys.gettrace()
        sys.settrace(trace)
        try:
            yield
        finally:
            ended = time.thread_time()
            sys.settrace(previous)
            self.remaining -= ended - started
        if exceeded or ended > limit:
            # The block finished anyway (Python drops a trace function whose exception was
            # swallowed, by the code it traced or by a generator's close): its answer came
            # after the budget ran out, and does not count.
            raise BudgetExceeded


# --------------------------------------------------------------------------------------------
# Compiled schemas


@dataclasses.dataclass(frozen=True)
class Problem:
    """Where an instance breaks a schema (JSON path parts) and how."""

    path: tuple[str | int, ...]
    message: str

    def json_path(self) -> str:
        out = "$"
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
        return out


class Compiled:
    """A checked schema, ready to evaluate instances on a budget."""

    def __init__(self, schema: Any) -> None:
        check(schema)
        self._validator = _safe(draft_of(schema))(
            schema, registry=_EMPTY_REGISTRY, format_checker=FORMATS)

    def problems(self, instance: Any, budget: Budget) -> list[Problem]:
        """Every problem (sorted by place); BudgetExceeded when the budget runs out."""
        with budget.spend():
            errors = sorted(self._errors(instance), key=lambda e: [str(p) for p in e.path])
        return [Problem(tuple(error.path), error.message) for error in errors]

    def first_problem(self, instance: Any, budget: Budget) -> Problem | None:
        """The most relevant problem, as jsonschema's best_match picks it, or None."""
        with budget.spend():
            error = jsonschema.exceptions.best_match(self._errors(instance))
        return None if error is None else Problem(tuple(error.absolute_path), error.message)

    def _errors(self, instance: Any) -> Iterator[jsonschema.exceptions.ValidationError]:
        try:
            yield from self._validator.iter_errors(instance)
        except RecursionError:
            yield jsonschema.exceptions.ValidationError("the document nests too deeply to check")


_cache: collections.OrderedDict[str, Compiled | SchemaProblem] = collections.OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 512


def compiled(schema: Any) -> Compiled:
    """The compiled form of ``schema`` (cached by its canonical JSON); raises SchemaProblem."""
    key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
    if found is None:
        try:
            found = Compiled(schema)
        except SchemaProblem as problem:
            found = problem
        with _cache_lock:
            _cache[key] = found
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    if isinstance(found, SchemaProblem):
        raise found
    return found



def clear_caches() -> None:
    """Forget compiled schemas and patterns (for a measurement of the cold path)."""
    with _cache_lock:
        _cache.clear()
    regex.cache_clear()
