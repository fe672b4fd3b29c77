"""``kubectl slipway``: a release read in five seconds, its history, a retry, and a review diff.

Installed with the package as the console script ``kubectl-slipway``, which kubectl finds on the
PATH (``kubectl slipway status iris``). It follows kubectl's plugin conventions: ``-n`` /
``--namespace`` (default: the context's namespace), ``--context``, ``--kubeconfig`` and
``-o json|yaml``. Terminal output is drawn with rich, in colour only on a terminal (and never
with NO_COLOR set).

- ``status NAME``: phase and reason; the desired and the serving revision with model version
  and image; verified pods; the rollback target; the last verdict, one row per test and target;
  and what to do next. ``--watch`` redraws it as the release moves on.
- ``history NAME``: the verdicts, oldest first.
- ``retry NAME``: sets the ``slipway.dev/retry`` annotation (a blocked release is tried again).
- ``diff -f FILE``: the revision FILE renders to, what would change in the Deployment and the
  Service, and whether that revision already failed: the GitOps reviewer's question.

The screens are built by pure functions of the objects (``status_screen``, ``history_table``,
``diff_report``), tested with golden files; only ``main`` talks to the cluster.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import yaml
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from slipway.api import documents, models
from slipway.clients import kube
from slipway.logic import lifecycle, render

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
PIPE_WIDTH = 120
STYLE = {"Ready": "bold green", "Progressing": "bold cyan", "Verifying": "bold cyan",
         "Pending": "bold", "RollingBack": "bold yellow", "RolledBack": "bold yellow",
         "Failed": "bold red", "Invalid": "bold red"}
OUTCOME_STYLE = {"Passed": "green", "Verified": "green", "RolledBack": "yellow",
                 "Failed": "red", "RollbackFailed": "red", "Error": "yellow"}


# --------------------------------------------------------------------------------------------
# What a ModelDeployment says, as plain data (status -o json|yaml, and the screen)


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _revision(revision: str | None, model: str | None, image: str | None) -> dict[str, Any]:
    return {"revision": revision, "modelVersion": model, "image": image}


def summary(md: dict[str, Any]) -> dict[str, Any]:
    """What ``status`` shows, as data: the same for the screen and for ``-o json|yaml``."""
    meta, spec, status = md["metadata"], md.get("spec") or {}, md.get("status") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    phase = str(status.get("phase") or "Pending")
    seen = observed is not None and generation is not None and observed >= generation
    ready = _condition(status, "Ready")
    target = status.get("rollbackTarget") or {}
    desired_rev, serving_rev = status.get("desiredRevision"), status.get("currentRevision")
    if phase == "Invalid" or not seen:
        desired_rev = None  # this spec was not rendered (the recorded one is an older spec's)
    desired = _revision(desired_rev, (spec.get("model") or {}).get("version"),
                        (spec.get("runtime") or {}).get("image"))
    if serving_rev and serving_rev == desired_rev:
        serving = dict(desired)
    elif serving_rev and serving_rev == target.get("revision"):
        serving = _revision(serving_rev, target.get("modelVersion"), target.get("image"))
    else:
        serving = _revision(serving_rev, None, None)
    verdict = status.get("lastSmokeTest") or {}
    return {
        "name": meta["name"], "namespace": meta.get("namespace"),
        "generation": generation, "observedGeneration": observed,
        "phase": phase if seen else "Pending",
        "reason": ready.get("reason") if seen else "NotObserved",
        "message": (ready.get("message") or "") if seen else
        "the Slipway operator has not seen this generation yet",
        "desired": desired, "serving": serving,
        "verifiedPods": status.get("verifiedPods"),
        "rollbackTarget": target or None,
        "lastFailure": status.get("lastFailure"),
        "lastVerdict": verdict or None,
        "rollbackCheck": status.get("rollbackCheck"),
        "next": next_step(md, phase if seen else "Pending"),
    }


def next_step(md: dict[str, Any], phase: str) -> str:
    """What the reader does now, in one sentence with the command."""
    name = md["metadata"]["name"]
    namespace = md["metadata"].get("namespace") or "default"
    retry = f"`kubectl slipway retry {name} -n {namespace}`"
    watch = f"`kubectl slipway status {name} -n {namespace} --watch`"
    failure = (md.get("status") or {}).get("lastFailure") or {}
    reason = failure.get("reason") or ""
    if phase == "Ready":
        return "nothing: this generation is rolled out and verified"
    if phase in ("Progressing", "Verifying"):
        return f"wait for the verdict: {watch}"
    if phase == "Pending":
        return "check that the Slipway operator runs: it has not seen this generation yet"
    if phase == "RollingBack":
        return f"wait for the revert ({watch}); then fix the spec"
    if phase == "Invalid":
        return "fix the spec (the message says which field): it is not rolled out as it is"
    if reason == lifecycle.ARTIFACT_DIGEST_MISMATCH:
        return ("the artifact at spec.model.uri is not the one spec.model.digest names: check "
                "it with `slipway digest`, fix the digest or the URI (a new generation)")
    if reason == lifecycle.ARTIFACT_FETCH_FAILED:
        return (f"make spec.model.uri reachable from the pods (URI, network, "
                f"credentialsSecret), then {retry}")
    if reason == lifecycle.SMOKE_TESTS_NOT_RUN:
        return ("let the operator reach the pods (NetworkPolicy, port, the API server's proxy), "
                f"then {retry}")
    stalled = _condition(md.get("status") or {}, "Stalled")
    if stalled.get("status") == "True" and stalled.get("reason") in ("ChildConflict",
                                                                      "ApplyFailed"):
        return f"fix what the message names (a name taken, an apply refused), then {retry}"
    if failure.get("rollbackFailed"):
        return f"fix the spec or the rollback target's image, then {retry}"
    return f"fix the spec (the failed test and its answer are above), or {retry}"


# --------------------------------------------------------------------------------------------
# Screens (pure: a ModelDeployment in, rich renderables out)


def _short(image: str | None, width: int = 60) -> str:
    if not image:
        return "?"
    return image if len(image) <= width else "…" + image[-(width - 1):]


def _line(label: str, value: RenderableType | str) -> Table:
    row = Table.grid(padding=(0, 1))
    row.add_column(width=16, style="bold")
    row.add_column()
    row.add_row(Text(label), Text(value) if isinstance(value, str) else value)
    return row


def _revision_text(rev: dict[str, Any], note: str = "") -> Text:
    text = Text(str(rev.get("revision") or "(not rendered)"), style="bold")
    if rev.get("modelVersion"):
        text.append(f"  model {rev['modelVersion']}")
    if rev.get("image"):
        text.append(f"  image {_short(rev['image'])}")
    if note:
        text.append(f"  {note}", style="dim")
    return text


def verdict_table(verdict: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    for column in ("TEST", "TARGET", "OUTCOME", "STATUS", "LATENCY"):
        table.add_column(column, no_wrap=True)
    table.add_column("MESSAGE", overflow="fold")
    for result in verdict.get("results") or []:
        outcome = str(result.get("outcome") or "")
        status = result.get("statusCode")
        latency = result.get("latencyMs")
        # Text, never markup: a message holds a model server's answer ("[setosa]" is data)
        table.add_row(Text(str(result.get("name") or "")), Text(str(result.get("target") or "")),
                      Text(outcome, style=OUTCOME_STYLE.get(outcome, "")),
                      Text("" if status is None else str(status)),
                      Text("" if latency is None else f"{latency} ms"),
                      Text(str(result.get("message") or "")))
    return table


def status_screen(md: dict[str, Any]) -> Group:
    info = summary(md)
    phase = info["phase"]
    head = Text(f"{info['namespace']}/{info['name']}  ", style="bold")
    head.append(phase, style=STYLE.get(phase, "bold"))
    if info["reason"] and info["reason"] != phase:
        head.append(f"  {info['reason']}", style=STYLE.get(phase, ""))
    head.append(f"   generation {info['generation']}, observed {info['observedGeneration']}",
                style="dim")
    parts: list[RenderableType] = [head]
    if info["message"]:
        parts.append(Text(info["message"], overflow="fold"))
    parts.append(Text(""))
    serving, desired = info["serving"], info["desired"]
    same = bool(serving.get("revision")) and serving.get("revision") == desired.get("revision")
    parts.append(_line("desired", _revision_text(desired, "(serving)" if same else "")))
    if not same and serving.get("revision"):
        target = info["rollbackTarget"] or {}
        note = "(the rollback target)" if serving.get("revision") == target.get("revision") \
            else ""
        parts.append(_line("serving", _revision_text(serving, note)))
    parts.append(_line("verified pods", f"{info['verifiedPods'] or '?'} "
                                        "(of the serving revision: gate open / all)"))
    target = info["rollbackTarget"]
    parts.append(_line("rollback target", _revision_text(
        target, f"verified {target.get('verifiedAt') or '?'}") if target else
        Text("none yet (no revision has been verified)", style="dim")))
    verdict = info["lastVerdict"]
    if verdict:
        outcome = str(verdict.get("outcome") or "")
        title = Text("\nlast verdict: ", style="bold")
        title.append(outcome, style=OUTCOME_STYLE.get(outcome, "bold"))
        title.append(f", revision {verdict.get('revision')}, generation "
                     f"{verdict.get('generation')}, {verdict.get('finishedAt') or '?'}",
                     style="dim")
        parts += [title, verdict_table(verdict)]
    check = info["rollbackCheck"]
    if check and phase in ("RollingBack", "RolledBack", "Failed"):
        parts.append(Text(f"rollback target re-checked: {check.get('outcome')}, revision "
                          f"{check.get('revision')}: {check.get('message') or ''}",
                          overflow="fold"))
    nxt = Text("\nnext: ", style="bold")
    nxt.append(info["next"])
    parts.append(nxt)
    return Group(*parts)


def history_table(md: dict[str, Any]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  title=f"{md['metadata'].get('namespace')}/{md['metadata']['name']}: verdicts,"
                        " oldest first", title_justify="left")
    for column in ("AT", "GEN", "REVISION", "MODEL", "OUTCOME", "REASON"):
        table.add_column(column, no_wrap=True, min_width=len(column))
    table.add_column("IMAGE", overflow="fold")
    for entry in (md.get("status") or {}).get("history") or []:
        outcome = str(entry.get("outcome") or "")
        table.add_row(*(Text(str(entry.get(key) or "")) for key in
                        ("at", "generation", "revision", "modelVersion")),
                      Text(outcome, style=OUTCOME_STYLE.get(outcome, "")),
                      Text(str(entry.get("reason") or "")), Text(str(entry.get("image") or "")))
    return table


# --------------------------------------------------------------------------------------------
# diff -f FILE: what applying it would do


def _projected(live: Any, like: Any) -> Any:
    """``live`` cut down to the fields ``like`` sets (the rest is the API server's defaults)."""
    if isinstance(like, dict) and isinstance(live, dict):
        return {key: _projected(live.get(key), value) for key, value in like.items()
                if key in live}
    if isinstance(like, list) and isinstance(live, list) and len(like) == len(live):
        return [_projected(item, model) for item, model in zip(live, like, strict=True)]
    return live


def _unified(kind: str, name: str, live: dict[str, Any] | None,
             rendered: dict[str, Any]) -> list[str]:
    desired = {"metadata": {k: v for k, v in rendered["metadata"].items()
                            if k in ("labels", "annotations")},
               "spec": rendered["spec"]}
    if live is None:
        return [f"{kind} {name}: created"]
    now = _projected({"metadata": live.get("metadata") or {}, "spec": live.get("spec") or {}},
                     desired)
    before = yaml.safe_dump(now, sort_keys=True, width=100).splitlines()
    after = yaml.safe_dump(desired, sort_keys=True, width=100).splitlines()
    lines = list(difflib.unified_diff(before, after, f"{kind} {name} (live)",
                                      f"{kind} {name} (FILE)", lineterm="", n=2))
    return lines or [f"{kind} {name}: no change"]


def diff_report(doc_body: dict[str, Any], spec: models.ModelDeploymentSpec, namespace: str,
                md: dict[str, Any] | None, deployment: dict[str, Any] | None,
                service: dict[str, Any] | None) -> tuple[list[str], bool]:
    """The review of applying ``doc_body``: lines, and whether it would be blocked or fail
    again (its revision failed before)."""
    name = str(doc_body["metadata"]["name"])
    uid = (md or {}).get("metadata", {}).get("uid")
    # The operator's fetcher image as it runs now (the live pod template's init container)
    live_init = (((deployment or {}).get("spec") or {}).get("template") or {}).get(
        "spec", {}).get("initContainers") or []
    fetcher = next((str(c.get("image")) for c in live_init
                    if c.get("name") == render.FETCH_CONTAINER), render.DEFAULT_FETCHER_IMAGE)
    rendered = render.render(spec, render.Meta(name=name, namespace=namespace, uid=uid,
                                               fetcher_image=fetcher))
    revision = rendered.revision
    out = [f"{namespace}/{name}: FILE renders revision {revision} (model "
           f"{spec.model.version}, image {spec.runtime.image})"]
    warn = False
    if md is None:
        out.append("not in the cluster: applying FILE creates it, and its first release")
    else:
        status = md.get("status") or {}
        out.append(f"the cluster: phase {status.get('phase') or 'Pending'}, desired revision "
                   f"{status.get('desiredRevision') or '?'}, serving "
                   f"{status.get('currentRevision') or '?'}")
        warn = _verdicts(out, doc_body, md, revision)
    out += _unified("Deployment", name, deployment, rendered.deployment)
    out += _unified("Service", name, service, rendered.service)
    return out, warn


def _retry_token(body: dict[str, Any]) -> str | None:
    return ((body.get("metadata") or {}).get("annotations") or {}).get(
        lifecycle.RETRY_ANNOTATION)


def _verdicts(out: list[str], doc_body: dict[str, Any], md: dict[str, Any],
              revision: str) -> bool:
    """What the cluster already decided about ``revision``: True (a warning) when applying
    the file would be blocked, or would try a revision that failed before."""
    status = md.get("status") or {}
    # kubectl apply keeps a retry token the file does not set (one `kubectl slipway retry` set)
    token = _retry_token(doc_body)
    token = _retry_token(md) if token is None else token
    history = status.get("history") or []
    if (md.get("spec") or {}) == (doc_body.get("spec") or {}):
        generation = md["metadata"].get("generation")
        failure = status.get("lastFailure") or {}
        out.append(f"the spec is the one the cluster has (generation {generation}): applying "
                   "FILE starts no new release")
        if failure.get("revision") == revision and generation is not None and \
                lifecycle.blocks(failure, generation, token or ""):
            out.append(f"BLOCKED: revision {revision} failed for this generation "
                       f"({failure.get('reason')}: {failure.get('message') or ''}); it is not "
                       "tried again until the spec changes or `kubectl slipway retry`")
            return True
        if failure.get("revision") == revision:
            out.append(f"revision {revision} failed for this generation, and the retry token "
                       "differs: applying FILE tries it again")
        return False
    # The verdicts on this revision, newest last: a failure that a later verdict did not
    # overturn ("could not test" is no verdict on the release)
    verdicts = [h for h in history if h.get("revision") == revision
                and h.get("reason") != lifecycle.SMOKE_TESTS_NOT_RUN
                and h.get("outcome") in ("Verified", "Failed")]
    if verdicts and verdicts[-1].get("outcome") == "Failed":
        last = verdicts[-1]
        out.append(f"FAILED BEFORE: revision {revision} failed at generation "
                   f"{last.get('generation')} ({last.get('reason')}, {last.get('at')}); "
                   "applying FILE makes a new generation, which tries it again")
        return True
    if revision == status.get("currentRevision") and \
            revision == (status.get("rollbackTarget") or {}).get("revision"):
        out.append(f"revision {revision} is the verified one that serves: the pods stay as "
                   "they are")
    return False


# --------------------------------------------------------------------------------------------
# The command


def console(file: Any = None) -> Console:
    """Colour only on a terminal, never with NO_COLOR (rich reads both); into a pipe or a file,
    lines of 120 columns (COLUMNS sets another width) rather than a terminal's 80."""
    out = Console(file=file or sys.stdout, highlight=False, soft_wrap=False, markup=False)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = PIPE_WIDTH
    return out


def plain(renderable: RenderableType, width: int = PIPE_WIDTH) -> str:
    """A screen as plain text (what the golden files hold, and what a pipe gets)."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False,
            highlight=False, markup=False).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def _dump(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2, default=str) + "\n"
    return yaml.safe_dump(data, sort_keys=False, width=100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl slipway", description="Slipway's ModelDeployments, read the way a "
        "release is reviewed: status, history, retry and a diff before merging.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="default: the context's namespace")
    common.add_argument("--context", help="the kubeconfig context to use")
    common.add_argument("--kubeconfig", help="path to the kubeconfig (default: KUBECONFIG or "
                        "~/.kube/config)")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("status", parents=[common], help="one screen: where the release is")
    cmd.add_argument("name")
    cmd.add_argument("-o", "--output", choices=["json", "yaml"])
    cmd.add_argument("-w", "--watch", action="store_true", help="redraw as the release moves on")
    cmd = sub.add_parser("history", parents=[common], help="the verdicts, oldest first")
    cmd.add_argument("name")
    cmd.add_argument("-o", "--output", choices=["json", "yaml"])
    cmd = sub.add_parser("retry", parents=[common],
                         help="try a blocked release again (sets slipway.dev/retry)")
    cmd.add_argument("name")
    cmd = sub.add_parser("diff", parents=[common],
                         help="what applying FILE would change, and whether it failed before")
    cmd.add_argument("-f", "--filename", required=True, help="a file with ModelDeployments, or -")
    cmd.add_argument("--name", help="which ModelDeployment, when the file holds several")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        kube.use_kubeconfig(args.kubeconfig, args.context)
        namespace = args.namespace or kube.kubeconfig_namespace()
        return _run(args, namespace)
    except ConfigException as error:
        print(f"kubectl slipway: kubeconfig: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ApiException as error:
        print(f"kubectl slipway: the API server answered {error.status} {error.reason}: "
              f"{kube.status_reason(error)}", file=sys.stderr)
        return EXIT_ERROR
    except (HTTPError, OSError) as error:
        print(f"kubectl slipway: could not reach the API server: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK


def _read(namespace: str, name: str) -> dict[str, Any] | None:
    md = kube.read_model_deployment(namespace, name)
    if md is None:
        print(f"kubectl slipway: ModelDeployment {name!r} not found in namespace "
              f"{namespace!r}", file=sys.stderr)
    return md


def _run(args: argparse.Namespace, namespace: str) -> int:
    out = console()
    if args.command == "diff":
        picked = documents.pick_release(args.filename, args.name, sys.stdin, sys.stderr)
        if isinstance(picked, int):
            return picked
        document, spec = picked
        name = document.name
        target_ns = args.namespace or document.body["metadata"].get("namespace") or namespace
        md = kube.read_model_deployment(target_ns, name)
        lines, warn = diff_report(document.body, spec, target_ns, md,
                                  kube.read_deployment(target_ns, name),
                                  kube.read_service(target_ns, name))
        for line in lines:
            style = "red" if line.startswith(("-", "BLOCKED", "FAILED")) else \
                "green" if line.startswith("+") else None
            out.print(Text(line, style=style or ""), soft_wrap=True)
        return EXIT_FAILED if warn else EXIT_OK
    md = _read(namespace, args.name)
    if md is None:
        return EXIT_FAILED
    if args.command == "retry":
        # Microseconds: two retries in one second are two retries.
        token = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        if kube.annotate_model_deployment(namespace, args.name,
                                          {lifecycle.RETRY_ANNOTATION: token}) is None:
            print(f"kubectl slipway: ModelDeployment {args.name!r} not found in namespace "
                  f"{namespace!r}", file=sys.stderr)
            return EXIT_FAILED
        print(f"modeldeployment.slipway.dev/{args.name} annotated {lifecycle.RETRY_ANNOTATION}"
              f"={token}: the operator tries its release again")
        return EXIT_OK
    if args.command == "history":
        if args.output:
            sys.stdout.write(_dump((md.get("status") or {}).get("history") or [], args.output))
        else:
            out.print(history_table(md))
        return EXIT_OK
    if args.output:
        sys.stdout.write(_dump(summary(md), args.output))
        return EXIT_OK
    if not args.watch:
        out.print(status_screen(md))
        return EXIT_OK
    return _watch(out, namespace, args.name, md)


def _watch(out: Console, namespace: str, name: str, md: dict[str, Any]) -> int:
    """Redraw on every change: in place on a terminal, one screen after the other elsewhere.
    Polls once a second (one GET) until interrupted, or until the object is gone."""
    if out.is_terminal:
        from rich.live import Live

        with Live(status_screen(md), console=out, auto_refresh=False) as live:
            for fresh in _changes(namespace, name, md):
                live.update(status_screen(fresh), refresh=True)
    else:
        out.print(status_screen(md))
        for fresh in _changes(namespace, name, md):
            out.print(Text(""))
            out.print(status_screen(fresh))
    out.print(f"ModelDeployment {name} is gone")
    return EXIT_FAILED


def _changes(namespace: str, name: str, md: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each new version of the object, until it is gone."""
    version = md["metadata"].get("resourceVersion")
    while True:
        time.sleep(1.0)
        fresh = kube.read_model_deployment(namespace, name)
        if fresh is None:
            return
        if fresh["metadata"].get("resourceVersion") != version:
            version = fresh["metadata"].get("resourceVersion")
            yield fresh


if __name__ == "__main__":
    sys.exit(main())
