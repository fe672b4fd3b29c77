"""`slipway dev-cluster status` reports a crashed component instead of hiding it; the pod
bridge's address is fixed."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from slipway_dev import cluster, podnet


def test_a_dead_component_is_reported_with_its_last_log_lines(tmp_path: pathlib.Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    log = tmp_path / "kube-scheduler.log"
    log.write_text("starting\nE1125 fatal: could not bind 127.0.0.1:10259: address in use\n")
    state = cluster.ClusterState(
        state_dir=str(tmp_path), kubeconfig=str(tmp_path / "kubeconfig"), server="",
        components=[cluster.Component("kube-scheduler", dead.pid, str(log))])
    state.save()
    healthy, lines = cluster.status(tmp_path)
    assert healthy is False
    report = "\n".join(lines)
    assert "kube-scheduler" in report and "DEAD" in report
    assert "address in use" in report


def test_status_without_a_cluster_says_how_to_start_one(tmp_path: pathlib.Path) -> None:
    healthy, lines = cluster.status(tmp_path)
    assert healthy is False
    assert "slipway dev-cluster up" in lines[0]


def test_up_refuses_to_start_over_an_existing_cluster(tmp_path: pathlib.Path) -> None:
    cluster.ClusterState(state_dir=str(tmp_path), kubeconfig="", server="",
                         components=[]).save()
    try:
        cluster.up(tmp_path, quiet=True)
    except cluster.ClusterError as error:
        assert "dev-cluster down" in str(error)
    else:
        raise AssertionError("up started a second cluster over the first one's state")


def test_free_pod_networks_do_not_overlap_host_routes() -> None:
    bridge, cidr = cluster.pick_pod_network()
    assert bridge.startswith("slw") and cidr.endswith("/16")


def test_the_pod_bridge_gets_a_stable_locally_administered_unicast_mac() -> None:
    mac = podnet.bridge_mac("slw1")
    octets = [int(part, 16) for part in mac.split(":")]
    assert len(octets) == 6
    assert octets[0] & 0x02 and not octets[0] & 0x01  # locally administered, unicast
    assert podnet.bridge_mac("slw1") == mac  # the same on every start
    assert podnet.bridge_mac("slw2") != mac  # two local clusters' bridges differ
