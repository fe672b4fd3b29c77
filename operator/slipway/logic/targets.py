"""Where smoke tests may go: the ModelDeployment's own pods and its own Service, nothing else.

Pure. Whoever may create a ModelDeployment may often also create pods and edit Services in its
namespace, so neither a pod carrying Slipway's labels nor the Service of Slipway's name is
trusted for what it claims:

- a pod is a target only if it is Ready, of the revision under test, controlled by a ReplicaSet
  of this ModelDeployment's Deployment, and not on the host's network (whose address is the
  node's, where other services listen);
- the Service is a target only if it is the one Slipway owns and rendered: controlled by this
  ModelDeployment, of type ClusterIP with an address, the rendered selector and port; it has
  endpoints, and every address its EndpointSlices route to is one of this ModelDeployment's
  pods (EndpointSlices can be made by hand, and can point anywhere but loopback). A direct request
  goes to its cluster IP, never to a DNS name (``NAME.NAMESPACE.svc`` is relative: the resolver's
  search path could end it in another namespace).

Anything that fails these checks is refused with a reason, which the smoke tests report as "could
not test" without sending a byte.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from slipway.logic import conditions, render


@dataclasses.dataclass(frozen=True)
class ServiceTarget:
    """The Service to test, or why it may not be tested."""

    cluster_ip: str | None
    refusal: str | None


def is_our_pod(pod: dict[str, Any], meta: render.Meta) -> bool:
    """A pod made by this ModelDeployment's Deployment, off the host network."""
    pod_meta = pod.get("metadata") or {}
    if (pod.get("spec") or {}).get("hostNetwork"):
        return False
    labels = pod_meta.get("labels") or {}
    if labels.get(render.LABEL_OWNER) != meta.name:
        return False
    return any(ref.get("controller") and ref.get("kind") == "ReplicaSet"
               and str(ref.get("name", "")).startswith(f"{meta.name}-")
               for ref in pod_meta.get("ownerReferences") or [])


def verifiable_pods(pods: list[dict[str, Any]], meta: render.Meta, revision: str
                    ) -> list[dict[str, Any]]:
    """Ready pods of ``revision`` that are this ModelDeployment's own, sorted by name."""
    return sorted(
        (pod for pod in pods
         if is_our_pod(pod, meta)
         and (pod["metadata"].get("labels") or {}).get(render.LABEL_REVISION) == revision
         and not pod["metadata"].get("deletionTimestamp")
         and (conditions.get((pod.get("status") or {}).get("conditions"), "Ready") or {})
         .get("status") == "True"),
        key=lambda pod: pod["metadata"]["name"])


def pod_ips(pods: list[dict[str, Any]], meta: render.Meta) -> set[str]:
    """Every address of every pod of this ModelDeployment (any revision)."""
    out: set[str] = set()
    for pod in pods:
        if not is_our_pod(pod, meta):
            continue
        status = pod.get("status") or {}
        out.update(str(item.get("ip")) for item in status.get("podIPs") or [] if item.get("ip"))
        if status.get("podIP"):
            out.add(str(status["podIP"]))
    return out


def _endpoint_addresses(slices: list[dict[str, Any]]) -> list[str]:
    return sorted({str(address) for piece in slices for endpoint in piece.get("endpoints") or []
                   for address in endpoint.get("addresses") or []})


def service_target(meta: render.Meta, rendered: dict[str, Any], live: dict[str, Any] | None,
                   slices: list[dict[str, Any]], pods: list[dict[str, Any]]) -> ServiceTarget:
    """Whether the live Service is the one Slipway rendered and routes only to our pods."""
    name = f"Service {meta.name}"
    if live is None:
        return ServiceTarget(None, f"{name} does not exist yet")
    refs = (live.get("metadata") or {}).get("ownerReferences") or []
    if not any(ref.get("controller") and ref.get("uid") == meta.uid for ref in refs):
        return ServiceTarget(None, f"{name} is not controlled by this ModelDeployment")
    spec = live.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind != "ClusterIP":
        return ServiceTarget(None, f"{name} is of type {kind}, not ClusterIP")
    cluster_ip = spec.get("clusterIP")
    if not cluster_ip or cluster_ip == "None":
        return ServiceTarget(None, f"{name} has no cluster IP")
    want = rendered["spec"]
    if spec.get("selector") != want["selector"]:
        return ServiceTarget(None, f"{name} selects {spec.get('selector')}, not the pods Slipway "
                             f"rendered it for ({want['selector']})")
    rendered_port = want["ports"][0]
    if not any(port.get("port") == rendered_port["port"] and
               port.get("targetPort") == rendered_port["targetPort"]
               for port in spec.get("ports") or []):
        return ServiceTarget(None, f"{name} has no port {rendered_port['port']} to the "
                             f"'{rendered_port['targetPort']}' port of its pods")
    addresses = _endpoint_addresses(slices)
    if not addresses:
        return ServiceTarget(None, f"{name} has no endpoints yet")
    ours = pod_ips(pods, meta)
    strangers = [address for address in addresses if address not in ours]
    if strangers:
        shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more"
                                            if len(strangers) > 3 else "")
        return ServiceTarget(None, f"{name} routes to {shown}, which "
                             f"{'is' if len(strangers) == 1 else 'are'} not a pod of this "
                             "ModelDeployment")
    return ServiceTarget(str(cluster_ip), None)
