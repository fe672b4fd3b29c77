"""The ``slipway`` command: offline checks for reviewers, the CRD generator and the operator.

``validate`` and ``render`` need no cluster, so a GitOps pipeline can reject a bad release and show
the objects it would produce before anything is merged; ``smoke`` sends a release's smoke tests
to any running server with the operator's own request building, checks and messages. Exit codes:
0 fine, 1 invalid input (or a smoke test failed), 2 usage error, 3 (``smoke``) could not test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from slipway.api import crd, docs, documents, models
from slipway.logic import render


def _check(args: argparse.Namespace, stdin: TextIO, out: TextIO, err: TextIO,
           *, emit: bool) -> int:
    failed = False
    seen = 0
    for item in documents.read_all(args.filename, stdin):
        if isinstance(item, str):
            print(item, file=err)
            failed = True
            continue
        if not documents.is_ours(item.body):
            kind = item.body.get("kind", "?")
            print(f"{item.source}: skipped {kind} (document {item.index + 1}): "
                  f"not a {models.KIND}", file=err)
            continue
        seen += 1
        spec = item.parse(err)
        if spec is None:
            failed = True
            continue
        if emit:
            meta = render.Meta.from_body(item.body, args.fetcher_image)
            if args.namespace:
                meta = dataclasses.replace(meta, namespace=args.namespace)
            rendered = render.render(spec, meta)
            for obj in rendered.objects():
                out.write(f"---\n# Source: {item.source} ({models.KIND}/{meta.name}, "
                          f"revision {rendered.revision})\n")
                out.write(preset_note(spec, item.body))
                out.write(crd.dump_yaml(obj))
        else:
            print(f"{item.label}: valid", file=out)
    if seen == 0 and not failed:
        print(f"no {models.KIND} found in {', '.join(args.filename)}", file=err)
        return 1
    return 1 if failed else 0


def preset_note(spec: models.ModelDeploymentSpec, body: dict[str, Any]) -> str:
    """Comment lines saying what a protocol preset made of the spec (what is not in the
    rendered objects: the scoring path and the contract)."""
    protocol = spec.runtime.protocol
    if protocol == "custom":
        return ""
    given = (body.get("spec") or {}).get("schema") is not None
    contract = "the spec's" if given else f"the {protocol} preset's"
    return (f"# runtime.protocol {protocol} (what the spec sets itself wins): scoringPath "
            f"{spec.runtime.scoring_path}; probes readiness {spec.probes.readiness.path}, "
            f"liveness {spec.probes.liveness.path}, startup {spec.probes.startup.path}; "
            f"schema {contract}\n")


def cmd_validate(args: argparse.Namespace) -> int:
    return _check(args, sys.stdin, sys.stdout, sys.stderr, emit=False)


def cmd_render(args: argparse.Namespace) -> int:
    return _check(args, sys.stdin, sys.stdout, sys.stderr, emit=True)


def cmd_digest(args: argparse.Namespace) -> int:
    from slipway.clients import artifacts
    from slipway.logic import digest

    try:
        found = artifacts.digest_path(args.path)
    except digest.ManifestError as error:
        print(f"slipway digest: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"slipway digest: {args.path}: {error.strerror or error}", file=sys.stderr)
        return 1
    if args.manifest and found.manifest is not None:
        sys.stdout.write(found.manifest)
    print(found.digest)
    return 0


FETCH_EXIT = {"ArtifactFetchFailed": 1, "ArtifactDigestMismatch": 2}


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch the artifact and check its digest; on failure the reason and message go to stderr
    and to the termination log (what the kubelet shows as the container's message). Exit 0
    verified, 1 ArtifactFetchFailed, 2 ArtifactDigestMismatch, 64 usage."""
    from slipway.clients import artifacts
    from slipway.logic import digest

    uri = args.uri or os.environ.get("MODEL_URI") or ""
    expected = None if args.no_verify else \
        (args.digest or os.environ.get("MODEL_DIGEST") or None)
    if not uri:
        print("slipway fetch: no --uri and no MODEL_URI", file=sys.stderr)
        return 64
    if expected is None and not args.no_verify:
        print(f"slipway fetch: {artifacts.shown(uri)}: no --digest and no MODEL_DIGEST (say "
              "--no-verify to fetch it unchecked)", file=sys.stderr)
        return 64
    if expected is not None and not digest.DIGEST.fullmatch(expected):
        print(f"slipway fetch: digest {expected!r} is not sha256: and 64 lowercase hex",
              file=sys.stderr)
        return 64
    try:
        found = artifacts.fetch(uri, args.dest, expected, timeout=args.timeout)
    except artifacts.FetchError as error:
        line = f"{error.reason}: {error}"
        print(f"slipway fetch: {line}", file=sys.stderr)
        if args.termination_log:
            try:
                pathlib.Path(args.termination_log).write_text(line[:4000] + "\n")
            except OSError as problem:
                print(f"slipway fetch: termination log: {problem}", file=sys.stderr)
        return FETCH_EXIT.get(error.reason, 1)
    checked = "verified" if expected is not None else "NOT verified (--no-verify)"
    print(f"slipway fetch: {artifacts.shown(uri)}: {found.files} file(s), {found.digest}, "
          f"{checked}; in {pathlib.Path(args.dest) / artifacts.ARTIFACT}", file=sys.stderr)
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    text = crd.render_crd_yaml()
    if args.output:
        pathlib.Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    path = pathlib.Path(args.readme)
    try:
        changed = docs.update_readme(path, check=args.check)
    except (OSError, ValueError) as error:
        print(f"slipway docs: {error}", file=sys.stderr)
        return 2
    if args.check and changed:
        print(f"{path}: the field reference is out of date; run `slipway docs`", file=sys.stderr)
        return 1
    print(f"{path}: field reference {'updated' if changed else 'up to date'}")
    return 0


SMOKE_COULD_NOT_TEST = 3
_OUTCOME_EXIT = {"Passed": 0, "Failed": 1, "Error": SMOKE_COULD_NOT_TEST}


def smoke_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a smoke-test target (``None`` if it can): the tests' paths are
    appended to it, so it is a base (scheme, host, optional port and path prefix), nothing more."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError as error:
        return f"not a URL: {error}"
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials (user:password@)"
    if parts.query or url.rstrip().endswith("?"):
        return "must not have a query (?...): the tests' paths are appended to it"
    if parts.fragment or "#" in url:
        return "must not have a fragment (#...)"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    return None


def _smoke_table(results: Sequence[models.SmokeTestResult]) -> list[str]:
    rows = [("TEST", "OUTCOME", "STATUS", "LATENCY", "MESSAGE")]
    for result in results:
        rows.append((result.name, result.outcome,
                     "" if result.status_code is None else str(result.status_code),
                     "" if result.latency_ms is None else f"{result.latency_ms} ms",
                     result.message))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row[:4], widths,
                                                                  strict=True)), row[4]]).rstrip()
            for row in rows]


def cmd_smoke(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    for option, url in (("--url", args.url), ("--serving-url", args.serving_url)):
        problem = None if url is None else smoke_url_problem(url)
        if problem is not None:  # the URL itself is not echoed: it may hold a password
            print(f"slipway smoke: {option}: {problem}", file=err)
            return 2
    picked = documents.pick_release(args.filename, args.name, sys.stdin, err)
    if isinstance(picked, int):
        return picked
    document, spec = picked
    if not spec.smoke_tests:
        print(f"{document.label}: no smoke tests in spec.smokeTests; nothing to send", file=err)
        return 1
    if args.serving_url is not None and spec.agreement is None:
        print(f"slipway smoke: --serving-url needs spec.agreement in {document.label} "
              "(it says which answers to compare)", file=err)
        return 2

    from slipway.clients import smoke  # imported late: httpx, only for this command

    verify: str | bool = args.cacert if args.cacert else not args.insecure_skip_tls_verify
    client = smoke.ClientSettings(verify=verify)
    target = smoke.Target(name=args.url.rstrip("/"), base_url=args.url.rstrip("/"))
    serving = None if args.serving_url is None else smoke.Target(
        name=args.serving_url.rstrip("/"), base_url=args.serving_url.rstrip("/"))
    if args.output != "json":
        against = f" (answers compared with {serving.name})" if serving else ""
        print(f"{document.label}: {len(spec.smoke_tests)} smoke test"
              f"{'' if len(spec.smoke_tests) == 1 else 's'} against {target.name}{against}",
              file=err)
    verdict = asyncio.run(smoke.run_smoke_tests(spec, [target], client, serving=serving))
    if args.output == "json":
        status = verdict.to_status(revision="", generation=None, attempts=1)
        status.pop("revision")
        status["message"] = verdict.message
        if verdict.reason:
            status["reason"] = verdict.reason
        out.write(json.dumps(status, indent=2) + "\n")
    else:
        for line in _smoke_table(verdict.results):
            print(line, file=out)
        print(f"{verdict.outcome}: {verdict.message}", file=out)
    return _OUTCOME_EXIT[verdict.outcome]


IN_CLUSTER_LIVENESS = "http://0.0.0.0:8080/healthz"
LOCAL_LIVENESS = ("127.0.0.1", 8080)


def default_liveness(environ: Any = None) -> str:
    """``--liveness`` unless given: in a pod, every address on 8080 (the kubelet probes the
    pod's IP); elsewhere 127.0.0.1:8080, or none when that port is taken (a second
    ``slipway run`` on one machine used to die there with "address already in use")."""
    import os
    import socket

    environ = os.environ if environ is None else environ
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return IN_CLUSTER_LIVENESS
    host, port = LOCAL_LIVENESS
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            print(f"slipway: {host}:{port} is taken (another operator?); no liveness endpoint "
                  "for this one (set one with --liveness http://127.0.0.1:PORT/healthz)",
                  file=sys.stderr)
            return ""
    return f"http://{host}:{port}/healthz"


def cmd_run(args: argparse.Namespace) -> int:
    from slipway.engine import operator_main  # imported late: it pulls in kopf and the kube client

    liveness = default_liveness() if args.liveness is None else args.liveness
    return operator_main.run(
        namespaces=args.namespace or [], liveness=liveness, standalone=args.standalone,
        verbose=args.verbose, metrics_port=args.metrics_port, leader_elect=args.leader_elect,
        lease_ns=args.lease_namespace, lease_name=args.lease_name, identity=args.identity,
        log_format=args.log_format,
    )


def cmd_dev_cluster(args: argparse.Namespace) -> int:
    # Test and demo infrastructure lives outside the operator package, loaded only on request.
    from slipway_dev import cluster

    return cluster.main(args.action, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slipway", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, func, help_text in (
        ("validate", cmd_validate, "check ModelDeployments offline; one line per error"),
        ("render", cmd_render, "print the Deployment and Service the operator would apply"),
    ):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("-f", "--filename", action="append", required=True,
                         help="YAML file (several documents allowed); '-' reads stdin; repeatable")
        if name == "render":
            cmd.add_argument("-n", "--namespace", help="namespace to render into "
                             "(default: the document's, else 'default')")
            cmd.add_argument("--fetcher-image", default=os.environ.get(
                "SLIPWAY_FETCHER_IMAGE") or render.DEFAULT_FETCHER_IMAGE,
                help="image of the init container that fetches an http(s):// or s3:// "
                "artifact: the operator's own (default: $SLIPWAY_FETCHER_IMAGE, else "
                f"{render.DEFAULT_FETCHER_IMAGE})")
        cmd.set_defaults(func=func, namespace=None, fetcher_image=render.DEFAULT_FETCHER_IMAGE)

    help_text = ("send a ModelDeployment's smoke tests to a running server (the image run "
                 "locally, a port-forward, a staging endpoint), with the operator's checks; "
                 "exit 0 passed, 1 failed, 3 could not test")
    cmd = sub.add_parser("smoke", help=help_text, description=help_text)
    cmd.add_argument("-f", "--filename", required=True,
                     help="YAML file with the ModelDeployment; '-' reads stdin")
    cmd.add_argument("--url", required=True,
                     help="base URL of the server; each test's path is appended "
                     "(http://127.0.0.1:8080, or with a path prefix)")
    cmd.add_argument("--name", help="which ModelDeployment, when the file holds several")
    cmd.add_argument("--serving-url", help="a server of the release that serves now: the "
                     "spec.agreement tests go to both and the answers are compared")
    cmd.add_argument("--cacert", help="CA bundle to verify an https:// server with")
    cmd.add_argument("--insecure-skip-tls-verify", action="store_true",
                     help="do not verify an https:// server's certificate")
    cmd.add_argument("-o", "--output", choices=["table", "json"], default="table",
                     help="table (default) or json (the operator's status.lastSmokeTest form)")
    cmd.set_defaults(func=cmd_smoke)

    cmd = sub.add_parser("digest", help="the spec.model.digest of a model file or folder "
                         "(a folder's: the sha256 of its canonical manifest)")
    cmd.add_argument("path", help="a file, or a folder (every regular file below it)")
    cmd.add_argument("--manifest", action="store_true",
                     help="print a folder's manifest before its digest")
    cmd.set_defaults(func=cmd_digest)

    cmd = sub.add_parser("fetch", help="fetch a model artifact (http(s)://, s3://) and check "
                         "its digest: the init container of a rendered pod")
    cmd.add_argument("--uri", help="default: MODEL_URI")
    cmd.add_argument("--digest", help="sha256:<64 hex>; default: MODEL_DIGEST")
    cmd.add_argument("--no-verify", action="store_true",
                     help="fetch without a digest to check (an explicit choice)")
    cmd.add_argument("--dest", required=True,
                     help="folder to fetch into: DEST/artifact, and DEST/verified.json")
    cmd.add_argument("--termination-log", default=None,
                     help="write the failure here too (in a pod: /dev/termination-log)")
    cmd.add_argument("--timeout", type=float, default=60.0,
                     help="seconds without progress before a download fails (default 60)")
    cmd.set_defaults(func=cmd_fetch)

    cmd = sub.add_parser("crd", help="print the CRD generated from the models")
    cmd.add_argument("-o", "--output", help="write to this file instead of stdout")
    cmd.set_defaults(func=cmd_crd)

    cmd = sub.add_parser("docs", help="regenerate the README's field reference from the models")
    cmd.add_argument("readme", nargs="?", default="README.md", help="default: %(default)s")
    cmd.add_argument("--check", action="store_true",
                     help="change nothing; exit 1 if the reference is out of date")
    cmd.set_defaults(func=cmd_docs)

    cmd = sub.add_parser("run", help="run the operator (kopf)")
    cmd.add_argument("-n", "--namespace", action="append",
                     help="watch only this namespace (repeatable); default: all namespaces")
    cmd.add_argument("--liveness", default=None,
                     help="liveness endpoint, /healthz (leader or standby); '' disables it. "
                     f"Default: in a pod {IN_CLUSTER_LIVENESS}; elsewhere "
                     "http://127.0.0.1:8080/healthz, or none when that port is taken")
    cmd.add_argument("--metrics-port", type=int, default=0,
                     help="serve Prometheus metrics on this port (0, the default: off)")
    cmd.add_argument("--no-standalone", dest="standalone", action="store_false",
                     help="take part in kopf peering instead of running standalone")
    cmd.add_argument("--no-leader-elect", dest="leader_elect", action="store_false",
                     help="act without the leader Lease (only ever one operator running)")
    cmd.add_argument("--lease-namespace",
                     help="namespace of the leader Lease (default: the operator pod's own, "
                     "else slipway-system)")
    cmd.add_argument("--lease-name", default="slipway-operator",
                     help="name of the leader Lease (default: %(default)s)")
    cmd.add_argument("--identity", help="this candidate's name in the Lease (default: the pod's "
                     "name, POD_NAME; else the host name and a random suffix). Two running "
                     "operators must never share one")
    cmd.add_argument("--log-format", choices=["text", "json"],
                     default=os.environ.get("SLIPWAY_LOG_FORMAT") or "text",
                     help="text (for a person, the default) or json (one object per line: "
                     "time, level, logger, message, object, revision, phase, event); "
                     "default from SLIPWAY_LOG_FORMAT")
    cmd.add_argument("-v", "--verbose", action="store_true")
    cmd.set_defaults(func=cmd_run)

    cmd = sub.add_parser("dev-cluster", help="a local Kubernetes built from source (tests, demo)")
    cmd.add_argument("action", choices=["up", "down", "status", "env"])
    cmd.add_argument("--state-dir", help="where state lives (default: .slipway/dev-cluster)")
    cmd.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    cmd.set_defaults(func=cmd_dev_cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
