"""Smoke tests: ask the new revision real questions before calling it Ready.

A Deployment that rolled out and whose probes pass can still serve the wrong model, a broken
artifact or a changed response shape. After each rollout the operator sends every smoke test of
the ModelDeployment to every Ready pod of the new revision, and once through the Service, and
decides from the answers whether the release stands (``Passed``), must be rolled back
(``Failed``), or could not be judged (``Error``: the operator could not test, which is not the
model's fault and must not trigger a rollback).

This is the only module of the operator that sends HTTP. Its rules:

* requests go where the caller says and nowhere else: the final URL of every request is checked,
  right before it is sent, to be the target's base URL with the test's path appended byte for
  byte (an HTTP client resolves ``..``, and under the API server's proxy that is the API server's
  own API); proxy variables in the environment are ignored and redirects are not followed (a 3xx
  is just a status to compare);
* credentials for the API server (``ClientSettings.headers`` and the client certificate) are used
  only for targets reached through the API server's proxy, never sent to a model pod directly;
* every request is bounded: a timeout for the whole exchange, ``Accept-Encoding: identity`` and
  at most ``body_cap_bytes`` read off the wire (a compressed answer is inflated only up to that
  cap too), at most 8 requests of a run in flight, and whatever limiters the caller shares
  between runs; the whole run has one deadline;
* a request that could not be delivered (connection refused or timed out, or the API server
  saying it could not reach the pod) is retried a few times, and if it never is, that is "could
  not test" (``Error``), never a failure of the model: a model that accepted the connection and
  then stalled, hung up or answered wrongly has failed;
* response bodies are checked against the spec's JSON Schemas with ``jsonschemas`` (RE2, local
  references only) on a CPU budget for the whole run;
* each failure message names the test, the target and what the server said, in one line an admin
  can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import os
import re
import ssl
import threading
import time
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Literal, NoReturn

import httpx

from slipway.api import jsonschemas, models
from slipway.logic import compare

Outcome = Literal["Passed", "Failed", "Error"]

MAX_CONCURRENCY = 8
MAX_RESULTS = 64
MAX_RESULT_MESSAGE = 512
MAX_VERDICT_MESSAGE = 1024
SNIPPET_CHARS = 200
BACKOFF_SECONDS = 0.2
USER_AGENT = "slipway-smoke-test"
CHECK_SECONDS = 2.0  # CPU for checking one run's answers against the spec's JSON Schemas

# Through the API server's proxy: answers that come from the API server, not from the model.
_UNREACHABLE_STATUSES = frozenset({502, 503})  # the API server could not reach the pod/Service
_RETRY_API_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class Target:
    """Where to send the tests: one pod, or the Service."""

    name: str  # "pod/iris-6d4f-abc" or "service/iris", used in messages
    base_url: str  # "http://10.215.1.2:8080", or an API server proxy URL ending in "/proxy"
    via_api_proxy: bool = False
    refusal: str | None = None  # why nothing may be sent to it (reported as "could not test")


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """TLS and authentication for the API server's proxy, and the body cap."""

    verify: str | bool = True  # CA bundle file (or directory), or bool
    cert: tuple[str, str] | None = None  # client certificate and key files
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # e.g. Authorization
    body_cap_bytes: int = 65536


PREDICTIONS_DISAGREE = "PredictionsDisagree"
AGREEMENT = "agreement"  # the name of the result that compares two revisions' answers


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    message: str
    results: list[models.SmokeTestResult]
    started_at: str
    finished_at: str
    reason: str = ""  # PREDICTIONS_DISAGREE when only the agreement with the serving one failed

    def to_status(self, *, revision: str, generation: int | None, attempts: int
                  ) -> dict[str, Any]:
        """``status.lastSmokeTest`` (camelCase, as ``models.LastSmokeTest`` describes it)."""
        status: dict[str, Any] = {
            "revision": revision,
            "outcome": self.outcome,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "attempts": attempts,
            "results": [result.model_dump(mode="json", by_alias=True, exclude_none=True)
                        for result in self.results],
        }
        if generation is not None:
            status["generation"] = generation
        return status


class PathNotFound(LookupError):
    """A JSON path that does not exist in a document; the message says where it stops."""


# --------------------------------------------------------------------------------------------
# JSON paths and values

_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[([0-9]+)\]")


def lookup(document: Any, path: str) -> Any:
    """The value at ``path`` (``$``, ``.key`` and ``[index]`` steps, e.g. ``$.predictions[0]``).

    Raises PathNotFound (a LookupError) naming the last part of the path that exists, and
    ValueError for a path that is not of that form.
    """
    if not path.startswith("$"):
        raise ValueError(f"{path!r} is not a JSON path: it must start with '$'")
    current, walked, position = document, "$", 1
    while position < len(path):
        step = _PATH_STEP.match(path, position)
        if step is None:
            raise ValueError(
                f"{path!r} is not a supported JSON path (use $.key and [index] steps)")
        key, index = step.group(1), step.group(2)
        if key is not None:
            if not isinstance(current, dict):
                raise PathNotFound(f"{walked} is {_json_kind(current)}, not an object")
            if key not in current:
                raise PathNotFound(f"{walked} has no key {key!r}")
            current, walked = current[key], f"{walked}.{key}"
        else:
            number = int(index)
            if not isinstance(current, list):
                raise PathNotFound(f"{walked} is {_json_kind(current)}, not an array")
            if number >= len(current):
                raise PathNotFound(
                    f"{walked} has {len(current)} item{_plural(len(current))}, no [{number}]")
            current, walked = current[number], f"{walked}[{number}]"
        position = step.end()
    return current


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values: true is not 1, 1 is 1.0, objects and arrays compared deeply."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    return type(left) is type(right) and bool(left == right)


def _show(value: Any) -> str:
    """A JSON value for a message: strings quoted as 'x', everything else as JSON."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return _one_line(text, 100)


class _CheckBudgetSpent(Exception):
    """The run's CPU budget for JSON Schema checks is used up."""


def _schema_problem(schema: Mapping[str, Any], document: Any,
                    budget: jsonschemas.Budget) -> str | None:
    try:
        problem = jsonschemas.compiled(schema).first_problem(document, budget)
    except jsonschemas.SchemaProblem as error:  # the spec was checked; an old one may not be
        return f"the schema cannot be used: {_one_line(str(error), 200)}"
    except jsonschemas.BudgetExceeded:
        raise _CheckBudgetSpent from None
    if problem is None:
        return None
    return f"{_one_line(problem.message, 200)} at {problem.json_path()}"


# --------------------------------------------------------------------------------------------
# Text helpers


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _snippet(body: bytes) -> str:
    if not body.strip():
        return "(empty body)"
    return _one_line(body[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace"), SNIPPET_CHARS)


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


def _size(count: int) -> str:
    return f"{count // 1024} KiB" if count % 1024 == 0 else f"{count} bytes"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# One exchange


@dataclasses.dataclass(frozen=True)
class _Response:
    status: int
    headers: httpx.Headers
    body: bytes  # at most cap + 1 bytes
    oversize: bool
    latency_ms: int


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What one job needs: the spec, the shared clients and limits."""

    spec: models.ModelDeploymentSpec
    direct: httpx.AsyncClient
    proxied: httpx.AsyncClient | None
    api_headers: Mapping[str, str]
    semaphore: asyncio.Semaphore
    cap: int
    limiters: Sequence[asyncio.Semaphore]  # shared with other runs (fairness), taken in order
    budget: jsonschemas.Budget
    # The parsed answers of passed checks, by (test, target), for the agreement check.
    documents: dict[tuple[str, str], Any] = dataclasses.field(default_factory=dict)


class UnsafeURL(ValueError):
    """The URL a request would go to is not the target's base with the test's path appended."""


def url_for(target: Target, path: str) -> httpx.URL:
    """The target's base URL with ``path`` appended byte for byte; raises UnsafeURL otherwise.

    ``path`` was checked by the models (no dot segments, encodings of them, backslashes or
    fragments); this is the proof at the last moment, against what the HTTP client would make
    of it: same scheme, host and port, and a path that starts with the base's path and ends
    with exactly ``path``.
    """
    base = httpx.URL(target.base_url)
    problem = models.url_path_problem(path)
    if problem is not None:
        raise UnsafeURL(problem)
    prefix = base.raw_path.split(b"?", 1)[0].rstrip(b"/")
    expected = prefix + path.encode("ascii")
    url = base.copy_with(raw_path=expected)
    if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port) or \
            url.raw_path != expected or not url.raw_path.startswith(prefix + b"/"):
        raise UnsafeURL(f"the request would go to {_one_line(str(url), 200)}, not under "
                        f"{target.base_url}")
    return url


def _request_headers(plan: _Plan, test: models.SmokeTest, target: Target) -> httpx.Headers:
    headers = httpx.Headers({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if test.body is not None:
        headers["Content-Type"] = "application/json"
    for name, value in test.headers.items():
        if models.header_name_problem(name) is None:  # also enforced by the model
            headers[name] = value
    if target.via_api_proxy:
        for name, value in plan.api_headers.items():
            headers[name] = value
    return headers


class _Undecodable(Exception):
    """A Content-Encoding that cannot be read within the cap."""


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most ``cap + 1`` bytes of the body, raw off the wire and then inflated (gzip or
    deflate) up to the same cap; and whether the body was longer than ``cap``."""
    raw = bytearray()
    async for chunk in response.aiter_raw():
        raw += chunk
        if len(raw) > cap:
            break
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return bytes(raw[: cap + 1]), len(raw) > cap
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _Undecodable(f"the server answered with Content-Encoding {encoding}, although "
                           "asked for identity")
    wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(bytes(raw[:cap]), cap + 1)
    except zlib.error as error:
        raise _Undecodable(f"the {encoding} body could not be inflated ({error})") from None
    return body, len(body) > cap or len(raw) > cap


async def _exchange(plan: _Plan, test: models.SmokeTest, target: Target) -> _Response:
    """Send one request and read its response (bounded); raises on transport errors."""
    client = plan.proxied if target.via_api_proxy and plan.proxied is not None else plan.direct
    content = None if test.body is None else json.dumps(test.body).encode()
    url = url_for(target, plan.spec.test_path(test))
    request = client.build_request(test.method, url, headers=_request_headers(plan, test, target),
                                   content=content)
    if request.url.raw_path != url.raw_path or request.url.host != url.host or \
            request.url.port != url.port:
        raise UnsafeURL(f"the HTTP client changed the URL to {_one_line(str(request.url), 200)}")
    started = time.monotonic()
    async with asyncio.timeout(plan.spec.rollout.smoke_test_timeout_seconds):
        response = await client.send(request, stream=True)
        try:
            body, oversize = await _read_capped(response, plan.cap)
        finally:
            await response.aclose()
    latency_ms = round((time.monotonic() - started) * 1000)
    return _Response(response.status_code, response.headers, body, oversize, latency_ms)


@contextlib.asynccontextmanager
async def _limited(limiters: Sequence[asyncio.Semaphore]) -> AsyncIterator[None]:
    """Hold every limiter, taken in order (and given back if cancelled half-way)."""
    async with contextlib.AsyncExitStack() as stack:
        for limiter in limiters:
            await stack.enter_async_context(limiter)
        yield


def _api_status(response: _Response) -> dict[str, Any] | None:
    """The Kubernetes Status object of an error answered by the API server itself, if any."""
    if response.status < 400 or response.oversize:
        return None
    try:
        document = json.loads(response.body)
    except (ValueError, RecursionError):
        return None
    if isinstance(document, dict) and document.get("kind") == "Status":
        return document
    return None


def _describe_status(response: _Response, status: Mapping[str, Any]) -> str:
    head = " ".join(str(part) for part in (response.status, status.get("reason")) if part)
    return _one_line(f"{head}: {status.get('message') or '(no message)'}", 300)


def _could_not_connect(error: BaseException) -> bool:
    """True when no connection was made at all: the request never reached the server."""
    return isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def _describe_transport(error: BaseException, timeout: int) -> tuple[str, bool]:
    """A short description of a transport failure, and whether it was a timeout."""
    if isinstance(error, httpx.ConnectTimeout):
        return f"could not connect within {timeout}s", True
    if isinstance(error, (TimeoutError, httpx.TimeoutException)):
        return f"timed out after {timeout}s", True
    text = str(error) or type(error).__name__
    if isinstance(error, httpx.ConnectError):
        causes = _causes(error)
        if any(isinstance(cause, ConnectionRefusedError) for cause in causes):
            return "connection refused", False
        text = "; ".join(dict.fromkeys(str(cause) for cause in causes if str(cause)))
        lowered = text.lower()
        if "refused" in lowered:
            return "connection refused", False
        if "certificate" in lowered or "ssl" in lowered:
            return f"TLS handshake failed ({_one_line(text, 200)})", False
        return f"could not connect ({_one_line(text, 200)})", False
    if isinstance(error, httpx.RemoteProtocolError):
        return f"connection closed without a complete response ({_one_line(text, 200)})", False
    if isinstance(error, httpx.ReadError):
        return f"connection broken while reading the response ({_one_line(text, 200)})", False
    return f"{type(error).__name__} ({_one_line(text, 200)})", False


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what caused it (httpx wraps the OS error a few levels deep)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _result(test: models.SmokeTest, target: Target, outcome: Outcome, message: str = "",
            response: _Response | None = None) -> models.SmokeTestResult:
    return models.SmokeTestResult(
        name=test.name,
        target=target.name[:512],
        outcome=outcome,
        status_code=response.status if response is not None else None,
        latency_ms=response.latency_ms if response is not None else None,
        message=_one_line(message, MAX_RESULT_MESSAGE),
    )


async def _run_one(plan: _Plan, test: models.SmokeTest, target: Target
                   ) -> models.SmokeTestResult:
    """One test against one target, with retries when the request could not be delivered."""
    try:
        not_sendable = _not_sendable(plan.spec, test, plan.budget)
    except _CheckBudgetSpent:
        not_sendable = (f"not sent: the request body could not be checked within the "
                        f"{CHECK_SECONDS:g} s of CPU a run may spend on JSON Schema checks")
    if not_sendable is not None:
        return _result(test, target, "Failed", not_sendable)
    if target.refusal is not None:
        return _result(test, target, "Error", f"not sent: {target.refusal}")
    try:
        url_for(target, plan.spec.test_path(test))
    except UnsafeURL as error:
        return _result(test, target, "Failed", f"not sent: {error}")
    attempts = plan.spec.rollout.smoke_test_attempts
    timeout = plan.spec.rollout.smoke_test_timeout_seconds
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            await asyncio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 2))
        last = attempt == attempts
        tried = f"{attempt} attempt{_plural(attempt)}"
        async with plan.semaphore, _limited(plan.limiters):
            try:
                response = await _exchange(plan, test, target)
            except UnsafeURL as error:
                return _result(test, target, "Failed", f"not sent: {error}")
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as error:
                return _result(test, target, "Error", f"could not send the request: {error}")
            except (httpx.DecodingError, _Undecodable) as error:
                return _result(test, target, "Failed",
                               f"response body could not be decoded: {_one_line(str(error), 200)}")
            except (TimeoutError, httpx.TransportError) as error:
                if not last:
                    continue
                what, timed_out = _describe_transport(error, timeout)
                if _could_not_connect(error):
                    # Nothing reached the model: the operator could not test, which says nothing
                    # about the release (a NetworkPolicy, a partition, the API server down).
                    where = "the API server" if target.via_api_proxy else "it"
                    return _result(test, target, "Error",
                                   f"could not reach {where}: {what} after {tried}")
                if timed_out:
                    return _result(test, target, "Failed", f"{what} ({tried})")
                return _result(test, target, "Failed", f"{what} after {tried}")
        status = _api_status(response) if target.via_api_proxy else None
        if status is None:
            try:
                return _check(plan, test, target, response)
            except _CheckBudgetSpent:
                return _result(test, target, "Failed",
                               f"the answer could not be checked within the {CHECK_SECONDS:g} s "
                               "of CPU a run may spend on JSON Schema checks", response)
        if response.status in _RETRY_API_STATUSES and not last:
            continue
        said = _describe_status(response, status)
        if response.status in _UNREACHABLE_STATUSES:
            return _result(test, target, "Error",
                           f"the API server could not reach it after {tried}: {said}", response)
        return _result(test, target, "Error", f"the API server refused to proxy: {said}", response)
    raise AssertionError("unreachable: the last attempt always returns")  # pragma: no cover


def _check(plan: _Plan, test: models.SmokeTest, target: Target,
           response: _Response) -> models.SmokeTestResult:
    """The expectations, in order; the first that fails decides."""
    spec, cap = plan.spec, plan.cap
    expect = test.expect

    def failed(message: str) -> models.SmokeTestResult:
        return _result(test, target, "Failed", message, response)

    if response.status != expect.status:
        extra = ""
        if 300 <= response.status < 400 and "location" in response.headers:
            location = _one_line(response.headers["location"], 200)
            extra = f" (redirect to {location}, not followed)"
        return failed(f"expected status {expect.status}, got {response.status}{extra}: "
                      f"{_snippet(response.body)}")
    schema = spec.body_schema_for(test)
    compared = test in spec.agreement_tests()
    if schema is not None or expect.values or compared:
        if response.oversize:
            return failed(f"response larger than {_size(cap)}")
        try:
            document = json.loads(response.body, parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            return failed(f"response is not JSON: {_snippet(response.body)}")
        if compared:
            # Kept for the agreement check whatever the expectations say: the serving
            # revision's answer is the reference even where it differs from this release's
            # expectations (a new model version, say).
            plan.documents[(test.name, target.name)] = document
        if schema is not None:
            schema_name = "expect.bodySchema" if expect.body_schema is not None else (
                "spec.schema.output")
            problem = _schema_problem(schema, document, plan.budget)
            if problem is not None:
                return failed(f"response does not satisfy {schema_name}: {problem}")
        for expected in expect.values:
            try:
                actual = lookup(document, expected.path)
            except PathNotFound as error:
                return failed(f"{expected.path} is missing ({error})")
            if expected.tolerance is None:
                if not _json_equal(actual, expected.equals):
                    return failed(f"{expected.path} is {_show(actual)}, "
                                  f"expected {_show(expected.equals)}")
            else:
                tolerance = _tolerance(expected.tolerance)
                found = compare.difference(actual, expected.equals, tolerance)
                if found is not None:
                    return failed(f"{expected.path} is {_show(actual)}, expected "
                                  f"{_show(expected.equals)} within {_describe(tolerance)} "
                                  f"({found.replace(' vs ', ' vs expected ')})")
    if expect.max_latency_ms is not None and response.latency_ms > expect.max_latency_ms:
        return failed(f"took {response.latency_ms} ms, budget {expect.max_latency_ms} ms")
    return _result(test, target, "Passed", "", response)


def _tolerance(value: models.Tolerance | None) -> compare.Tolerance:
    if value is None:
        return compare.EXACT
    return compare.Tolerance(absolute=value.absolute or 0.0, relative=value.relative or 0.0)


def _describe(tolerance: compare.Tolerance) -> str:
    parts = []
    if tolerance.absolute:
        parts.append(f"±{tolerance.absolute:g}")
    if tolerance.relative:
        parts.append(f"{tolerance.relative * 100:g} %")
    return " or ".join(parts) or "no tolerance"


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _not_sendable(spec: models.ModelDeploymentSpec, test: models.SmokeTest,
                  budget: jsonschemas.Budget) -> str | None:
    """Why the test's request must not be sent (a request body that breaks the contract)."""
    if not spec.targets_scoring(test) or test.expect.status >= 400:
        return None
    if test.body is None:
        return ("not sent: a request to the scoring path needs a body that satisfies "
                "spec.schema.input")
    problem = _schema_problem(spec.schema_.input, test.body, budget)
    if problem is None:
        return None
    return f"not sent: the request body does not satisfy spec.schema.input: {problem}"


# --------------------------------------------------------------------------------------------
# Clients


_CONTEXTS: dict[tuple[Any, ...], ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _stamp(path: str | None) -> tuple[str | None, float, int]:
    """A file as a cache key: its path and when it changed (a rotated CA or client
    certificate is loaded again)."""
    if not path:
        return (path, 0.0, 0)
    try:
        stat = os.stat(path)
    except OSError:
        return (path, -1.0, -1)
    return (path, stat.st_mtime, stat.st_size)


def _ssl_context(settings: ClientSettings, *, with_cert: bool) -> ssl.SSLContext:
    """One context per CA bundle and client certificate, made once and shared by every run:
    loading a CA bundle costs milliseconds of CPU and memory that every smoke-test run would
    otherwise pay again."""
    verify = settings.verify
    cert = settings.cert if with_cert else None
    key = (_stamp(verify) if isinstance(verify, str) else verify,
           tuple(_stamp(part) for part in cert) if cert else None)
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            context = _CONTEXTS[key] = _new_ssl_context(settings, with_cert=with_cert)
            while len(_CONTEXTS) > 8:  # rotated files leave their old contexts behind
                del _CONTEXTS[next(iter(_CONTEXTS))]
        return context


def _new_ssl_context(settings: ClientSettings, *, with_cert: bool) -> ssl.SSLContext:
    verify = settings.verify
    if isinstance(verify, str):
        if os.path.isdir(verify):
            context = ssl.create_default_context(capath=verify)
        else:
            context = ssl.create_default_context(cafile=verify)
    else:
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
    if with_cert and settings.cert is not None:
        context.load_cert_chain(*settings.cert)
    return context


def _make_client(context: ssl.SSLContext, timeout: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=context,
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=MAX_CONCURRENCY, max_keepalive_connections=4),
        follow_redirects=False,  # a 3xx is a status to compare, not a place to go
        trust_env=False,  # proxy variables, .netrc and SSL_CERT_* of the environment are ignored
    )


# --------------------------------------------------------------------------------------------
# The verdict


def _bounded(results: list[models.SmokeTestResult]) -> list[models.SmokeTestResult]:
    """At most MAX_RESULTS results, keeping failures and errors first, in their original order."""
    if len(results) <= MAX_RESULTS:
        return results
    order = sorted(range(len(results)), key=lambda i: (results[i].outcome == "Passed", i))
    return [results[i] for i in sorted(order[:MAX_RESULTS])]


def _summary(results: list[models.SmokeTestResult], tests: int, targets: Sequence[Target]
             ) -> tuple[Outcome, str]:
    bad_outcomes: tuple[Outcome, ...] = ("Failed", "Error")
    for outcome in bad_outcomes:
        bad = [result for result in results if result.outcome == outcome]
        if bad:
            first = bad[0]
            message = f"smoke test {first.name!r} on {first.target}: {first.message}"
            if len(bad) > 1:
                more = len(bad) - 1
                message += f" (and {more} more {outcome.lower()} check{_plural(more)})"
            return outcome, _one_line(message, MAX_VERDICT_MESSAGE)
    names = ", ".join(target.name for target in targets[:8])
    if len(targets) > 8:
        names += f", and {len(targets) - 8} more"
    return "Passed", _one_line(
        f"{tests} smoke test{_plural(tests)} passed on {len(targets)} "
        f"target{_plural(len(targets))} ({names})", MAX_VERDICT_MESSAGE)


async def run_smoke_tests(spec: models.ModelDeploymentSpec, targets: Sequence[Target],
                          client: ClientSettings, *, deadline: float | None = None,
                          limiters: Sequence[asyncio.Semaphore] = (),
                          serving: Target | None = None) -> Verdict:
    """Send every smoke test to every target (concurrently, bounded) and judge the answers.

    ``deadline`` (seconds) bounds the whole run: a check still waiting for its answer then fails
    for want of one. ``limiters`` are semaphores shared with other runs, each taken around every
    request (a global and a per-tenant share, say), so that one slow tenant cannot take them all.
    ``serving``: a pod of the revision that serves now; with ``spec.agreement``, the agreement
    tests go to it too, and each target's answers are compared with its answers.
    """
    started = _now()
    if not targets:
        return Verdict("Error", "no targets to test", [], started, _now())
    tests = list(spec.smoke_tests)
    timeout = spec.rollout.smoke_test_timeout_seconds
    deadline = spec.rollout.verification_deadline_seconds if deadline is None else deadline
    try:  # certificates are loaded before any connection is opened
        direct_tls = _ssl_context(client, with_cert=False)
        proxied_tls = None
        if any(target.via_api_proxy for target in targets):
            proxied_tls = _ssl_context(client, with_cert=True)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        message = _one_line(f"could not set up the HTTP client: {error}", MAX_RESULT_MESSAGE)
        return Verdict("Error", message, [], started, _now())
    jobs = [(test, target) for test in tests for target in targets]
    compared = spec.agreement_tests() if serving is not None else []
    reference = [(test, serving) for test in compared if serving is not None]
    if serving is not None and serving.via_api_proxy and proxied_tls is None:
        proxied_tls = _ssl_context(client, with_cert=True)
    async with contextlib.AsyncExitStack() as stack:
        direct = await stack.enter_async_context(_make_client(direct_tls, timeout))
        proxied = None
        if proxied_tls is not None:
            proxied = await stack.enter_async_context(_make_client(proxied_tls, timeout))
        plan = _Plan(spec, direct, proxied, dict(client.headers),
                     asyncio.Semaphore(MAX_CONCURRENCY), client.body_cap_bytes, tuple(limiters),
                     jsonschemas.Budget(CHECK_SECONDS))
        tasks = [asyncio.ensure_future(_guarded(plan, test, target))
                 for test, target in [*jobs, *reference]]
        try:
            await asyncio.wait(tasks, timeout=deadline)
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    results = [
        task.result() if not task.cancelled() and task.exception() is None else _result(
            test, target, "Failed",
            f"no answer within the verification deadline of {_seconds(deadline)} "
            "(spec.rollout.verificationDeadlineSeconds)")
        for task, (test, target) in zip(tasks, [*jobs, *reference], strict=True)]
    own, theirs = results[:len(jobs)], results[len(jobs):]
    if serving is not None and spec.agreement is not None and compared:
        own += [_agreement(spec, plan.documents, compared, target, serving, theirs)
                for target in targets]
    outcome, message = _summary(own, len(tests), targets)
    reason = ""
    failed = [result for result in own if result.outcome == "Failed"]
    if outcome == "Failed" and all(result.name == AGREEMENT and result.target.startswith(
            tuple(f"{t.name} " for t in targets)) for result in failed):
        reason = PREDICTIONS_DISAGREE
        message = _one_line(f"{failed[0].target}: {failed[0].message}", MAX_VERDICT_MESSAGE)
    return Verdict(outcome, message, _bounded(own), started, _now(), reason)


def _agreement(spec: models.ModelDeploymentSpec, documents: Mapping[tuple[str, str], Any],
               compared: Sequence[models.SmokeTest], target: Target, serving: Target,
               serving_results: Sequence[models.SmokeTestResult]) -> models.SmokeTestResult:
    """One result: do ``target``'s answers agree with the serving revision's?"""
    agreement = spec.agreement
    assert agreement is not None
    name = f"{target.name} vs {serving.name} (serving)"

    def result(outcome: Outcome, message: str) -> models.SmokeTestResult:
        return models.SmokeTestResult(name=AGREEMENT, target=name[:512], outcome=outcome,
                                      message=_one_line(message, MAX_RESULT_MESSAGE))

    tally = compare.Agreement()
    for test in compared:
        new = documents.get((test.name, target.name))
        if new is None:
            continue  # its own check failed (and says why), or it has no JSON answer
        old = documents.get((test.name, serving.name))
        if old is None:
            why = next((r.message for r in serving_results if r.name == test.name), "")
            return result("Error", f"could not compare: the serving revision's answer to "
                          f"{test.name!r} is not usable: {why or 'no JSON answer'}")
        for compared_path in agreement.paths:
            values = []
            for document in (new, old):
                try:
                    values.append(lookup(document, compared_path.path))
                except PathNotFound:
                    values.append(compare.MISSING)
            tally.add(test.name, compared_path.path, values[0], values[1],
                      _tolerance(compared_path.tolerance))
    if tally.total == 0:
        return result("Passed", "nothing to compare (no usable answer of this revision)")
    summary = tally.summary(agreement.min_rate, serving.name)
    if tally.rate + 1e-12 < agreement.min_rate:
        return result("Failed", summary)
    return result("Passed", summary)


def _seconds(value: float) -> str:
    return f"{value:g} s"


async def _guarded(plan: _Plan, test: models.SmokeTest, target: Target
                   ) -> models.SmokeTestResult:
    """One job; an unexpected exception becomes an Error result rather than losing the verdict."""
    try:
        return await _run_one(plan, test, target)
    except Exception as error:  # noqa: BLE001 - reported in the result, never swallowed silently
        return _result(test, target, "Error",
                       f"internal error while testing: {type(error).__name__}: {error}")


def run_smoke_tests_sync(spec: models.ModelDeploymentSpec, targets: Sequence[Target],
                         client: ClientSettings, *, deadline: float | None = None) -> Verdict:
    """run_smoke_tests for synchronous callers (tests, the CLI)."""
    return asyncio.run(run_smoke_tests(spec, targets, client, deadline=deadline))
