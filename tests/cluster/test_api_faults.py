"""The operator behind an API fault injector (``slipway_dev.faultproxy``): every request it
makes, its Lease, its watches and its smoke tests through the API server's proxy included, goes
through a proxy that fails a share of them, cuts watches, or stops answering altogether.

- **Faults**: 20 % of requests fail (500/503/429/409 answered by the proxy, or held past the
  client's timeout and sent on late) and half the watches are cut mid-stream, for the whole run
  of the rollout stories: good v1, bad v2, crash-looping v3, good v4. The end state of each is
  right, no phase is entered twice in a story, every Event comes once, each revision gets one
  verdict, and no model pod got more smoke-test requests than the runs' configured attempts.
- **Outage**: the API server is unreachable for 30 s in the middle of a bad release; the same
  process (not restarted) finishes it, every transition announced once.
- **etcd restart**: etcd is killed in the middle of a bad release and started again 10 s later
  (the API server stays up); the same process finishes it, every transition announced once.

The suite's operator stops for the proxy's tests and starts again afterwards; the one under test
has the suite operator's identity and credentials, and the proxy's address in its kubeconfig.
"""

from __future__ import annotations

import collections
import copy
import json
import pathlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from slipway_dev import cluster as dev_cluster
from slipway_dev import faultproxy
from tests.cluster.conftest import Operator
from tests.cluster.kube import Kubectl, wait_until
from tests.cluster.test_guarded_rollout import (IMAGE, NAME, V1, V2_WRONG_MODEL_PATH,
                                                V3_CRASHES_AT_START, V4_GOOD, Story)

GOOD = [("Normal", "Progressing"), ("Normal", "Verifying"), ("Normal", "Verified")]
CRASH_AND_BACK = [("Normal", "Progressing"), ("Warning", "CrashLoop"),
                  ("Warning", "RollingBack"), ("Normal", "RolledBack")]
FAILED_AND_BACK = [("Normal", "Progressing"), ("Warning", "SmokeTestFailed"),
                   ("Warning", "RollingBack"), ("Normal", "RolledBack")]
# The order phases may be entered in, per story (a poll may miss one; none comes back).
GOOD_ORDER = ["Pending", "Progressing", "Verifying", "Ready"]
BAD_ORDER = ["Progressing", "Failed", "RollingBack", "Verifying", "RolledBack"]
SMOKE_TESTS = len(V1["spec"]["smokeTests"])
ATTEMPTS = 3  # rollout.smokeTestAttempts, the default
FAULTS = {"errors": 0.17, "delays": 0.03, "delay_seconds": 31.0, "cuts": 0.5,
          "cut_after": [2.0, 20.0]}


def patient(doc: dict[str, Any]) -> dict[str, Any]:
    """A story's release with a progress deadline that delayed requests cannot use up: a
    request held 31 s, a reconcile's read timeout of 30 s and a lost Lease took more than the
    stories' 45 s once, and a first release failed on ProgressDeadlineExceeded with its pods
    verified a moment later. The stories test what faults do to verdicts and Events; none of
    them ends on the deadline."""
    patched = copy.deepcopy(doc)
    patched["spec"]["rollout"]["progressDeadlineSeconds"] = 180
    return patched


def through(proxy: faultproxy.Process, kubeconfig: str, path: pathlib.Path) -> str:
    """``kubeconfig`` (one with a token), with the proxy as its server."""
    config = yaml.safe_load(pathlib.Path(kubeconfig).read_text())
    for entry in config["clusters"]:
        entry["cluster"] = {"server": proxy.url}
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture
def faulty(cluster: dev_cluster.ClusterState, operator: Operator, operator_kubeconfig: str,
           request: pytest.FixtureRequest) -> Iterator[tuple[faultproxy.Process, Operator]]:
    logs = pathlib.Path(cluster.state_dir) / "logs"
    proxy = faultproxy.Process(cluster.server, ca=str(pathlib.Path(cluster.state_dir) / "pki" /
                                                      "ca.crt"),
                               log=str(logs / f"faultproxy-{request.node.name[:40]}.log"),
                               seed=11)
    kubeconfig = through(proxy, operator_kubeconfig,
                         pathlib.Path(cluster.state_dir) / "faulty.kubeconfig")
    faulty_operator = Operator(kubeconfig, logs / f"operator-{request.node.name[:40]}.log",
                               identity=operator.identity)
    operator.stop()  # releases the Lease; the one under test takes it at once
    try:
        faulty_operator.start()
        yield proxy, faulty_operator
    finally:
        faulty_operator.stop()
        proxy.stop()
        operator.start()


class Phases:
    """Polls the object's phase in the background (directly, not through the proxy)."""

    def __init__(self, story: Story) -> None:
        self.story = story
        self.seen: list[tuple[int, str]] = []  # (generation, phase), each change once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                status = (self.story.md() or {}).get("status") or {}
                entry = (int(status.get("observedGeneration") or 0), str(status.get("phase")))
            except Exception:  # noqa: BLE001 - a failed poll is only a missed sample
                continue
            if not self.seen or self.seen[-1] != entry:
                self.seen.append(entry)

    def of(self, generation: int, since: int) -> list[str]:
        """The phases seen for ``generation``, in the order seen."""
        return [phase for seen, phase in self.seen[since:] if seen == generation]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def announced(story: Story) -> None:
    """Wait until the outbox is empty: every Event decided so far was posted (an Event whose
    post was failed or held past the timeout is retried; the Lease may be lost meanwhile)."""
    wait_until(lambda: not (story.md().get("status") or {}).get("announcements"), timeout=120,
               what="an empty outbox", diagnose=story.diagnose)


def in_order(phases: list[str], order: list[str]) -> bool:
    """Each phase of ``phases`` comes later in ``order`` than the one before it."""
    positions = [order.index(p) if p in order else -1 for p in phases]
    return -1 not in positions and positions == sorted(set(positions))


def scoring_requests(cluster: dev_cluster.ClusterState, namespace: str) -> int:
    """The smoke-test (scoring) requests every pod of the namespace received, from the
    containers' own logs on the node agent's disk."""
    total = 0
    pods = pathlib.Path(cluster.state_dir) / "nodes"
    for log in pods.glob(f"**/pods/{namespace}_*/*/*.log"):
        total += len(re.findall(r'"POST /[^ ]* HTTP', log.read_text(errors="replace")))
    return total


def smoke_runs(operator: Operator) -> float:
    return sum(operator.metric("slipway_smoke_test_duration_seconds_count", outcome=outcome)
               for outcome in ("Passed", "Failed", "Error"))


def test_under_20_percent_api_faults_the_four_stories_end_right_with_nothing_repeated(
    faulty: tuple[faultproxy.Process, Operator], kubectl: Kubectl, namespace: str,
    cluster: dev_cluster.ClusterState,
) -> None:
    proxy, operator = faulty
    story = Story(kubectl, operator, namespace)
    proxy.set_faults(**FAULTS)
    phases = Phases(story)
    started = time.monotonic()
    timings = []
    try:
        for doc, end, events, order, outcomes in [
            (patient(V1), "Ready", GOOD, GOOD_ORDER, ["Verified"]),
            (patient(V2_WRONG_MODEL_PATH), "RolledBack", FAILED_AND_BACK, BAD_ORDER,
             ["Failed", "RolledBack"]),
            (patient(V3_CRASHES_AT_START), "RolledBack", CRASH_AND_BACK, BAD_ORDER,
             ["Failed", "RolledBack"]),
            (patient(V4_GOOD), "Ready", GOOD, GOOD_ORDER, ["Verified"]),
        ]:
            mark = len(phases.seen)
            before = story.kubectl.get("md", NAME, namespace) or {}
            history_before = len((before.get("status") or {}).get("history") or [])
            begun = time.monotonic()
            story.apply(doc)
            md = story.wait_phase(end, timeout=300)
            timings.append(time.monotonic() - begun)
            announced(story)
            story.expect_events(events, settle=3)
            # Nothing oscillates: no phase of this generation entered twice, none out of order
            seen = phases.of(md["metadata"]["generation"], since=mark)
            assert seen and seen[-1] == end, seen
            assert in_order(seen, order), (doc["spec"]["model"]["version"], seen)
            # One verdict per revision of this story, in order
            history = md["status"]["history"][history_before:]
            assert [h["outcome"] for h in history] == outcomes, history
        assert story.serving_image() == f"{IMAGE}:1.0.0"  # v4 is the 1.0.0 image
        assert md["status"]["rollbackTarget"]["modelVersion"] == "1.1.0"
        verdicts = collections.Counter((h["revision"], h["outcome"], h.get("generation"))
                                       for h in md["status"]["history"])
        assert all(n == 1 for n in verdicts.values()), md["status"]["history"]
    finally:
        phases.stop()
    stats = proxy.stats()
    assert stats is not None
    counts = stats["counts"]
    # The faults really happened, of every kind
    assert stats["injected"] >= 0.15 * counts["requests"], counts
    for kind in ("error:500", "error:503", "error:429", "error:409", "delay", "cut"):
        assert counts.get(kind, 0) > 0, (kind, counts)
    # No model pod got more smoke-test requests than the runs could send: each run sends each
    # test at most rollout.smokeTestAttempts times (a request the proxy failed never reached it)
    runs = smoke_runs(operator)
    requests = scoring_requests(cluster, namespace)
    assert 0 < requests <= runs * SMOKE_TESTS * ATTEMPTS, (requests, runs)
    # And the process never restarted
    assert operator.process is not None and operator.process.poll() is None
    print(f"\n20 % API faults: {counts['requests']} requests, {stats['injected']} faults "
          f"injected ({json.dumps({k: v for k, v in counts.items() if ':' in k or k in ('delay', 'cut')})}); "
          f"stories converged in {', '.join(f'{t:.0f}' for t in timings)} s "
          f"({time.monotonic() - started:.0f} s in all); {requests} scoring requests "
          f"for {runs:.0f} smoke-test runs")


def ride_out(story: Story, disrupt: Callable[[], None]) -> float:
    """v1 Ready; then a bad release, ``disrupt()`` once it is rolling; it must end reverted by
    the same process, each transition announced once. Returns the seconds from the end of
    ``disrupt()`` to RolledBack."""
    story.given_v1_is_ready()
    process = story.operator.process
    assert process is not None
    story.apply(V2_WRONG_MODEL_PATH)
    wait_until(lambda: (story.md().get("status") or {}).get("phase") == "Progressing",
               timeout=60, what="v2 progressing", diagnose=story.diagnose)
    disrupt()
    disrupted = time.monotonic()
    md = story.wait_phase("RolledBack", timeout=240)
    recovered = time.monotonic() - disrupted
    announced(story)
    story.expect_events(FAILED_AND_BACK, settle=3)
    assert [h["outcome"] for h in md["status"]["history"]] == ["Verified", "Failed",
                                                               "RolledBack"]
    assert story.serving_image() == f"{IMAGE}:1.0.0"
    assert process.poll() is None and story.operator.process is process  # never restarted
    return recovered


def test_a_30_second_api_outage_mid_release_is_ridden_out_by_the_same_process(
    faulty: tuple[faultproxy.Process, Operator], kubectl: Kubectl, namespace: str,
) -> None:
    proxy, operator = faulty
    story = Story(kubectl, operator, namespace)

    def unreachable_for_30_s() -> None:
        proxy.outage(30)
        time.sleep(30.5)

    # When the API server is unreachable for 30 s in the middle of a bad release
    recovered = ride_out(story, unreachable_for_30_s)
    # Then the proxy really refused and broke connections, and the operator leads again (it
    # lost its Lease meanwhile, and took it back without a restart)
    stats = proxy.stats()
    assert stats is not None and stats["outages"] == 1 and stats["counts"].get("broken", 0) > 0
    wait_until(lambda: operator.metric("slipway_leader") == 1, timeout=30,
               what="the operator leading again", diagnose=story.diagnose)
    print(f"\n30 s outage: RolledBack {recovered:.0f} s after it ended; "
          f"{stats['counts'].get('broken', 0)} connections broken")


def test_etcd_restarted_mid_release_is_ridden_out_by_the_same_process(
    cluster: dev_cluster.ClusterState, operator: Operator, kubectl: Kubectl, namespace: str,
) -> None:
    story = Story(kubectl, operator, namespace)
    unanswered: list[float] = []
    # When etcd is killed in the middle of a bad release, and started again 10 s later
    recovered = ride_out(story, lambda: unanswered.append(
        dev_cluster.restart_etcd(cluster, down_seconds=10, kill=True)))
    print(f"\netcd restart: down {unanswered[0]:.0f} s; RolledBack {recovered:.0f} s after it "
          "answered again")
