"""The ModelDeployment API, modelled once.

Everything else derives from these pydantic models: the CRD's OpenAPI schema (``slipway crd``),
offline validation (``slipway validate``), the renderer's input, and the README's field
reference. Keeping one source means the cluster, the CLI and the docs cannot disagree about what a
valid release is.

Conventions: camelCase names on the wire, unknown fields rejected, every string, list and map
bounded (so CEL cost estimates stay in budget), and ``null`` accepted for every optional field,
meaning "use the default" (as server-side apply treats it).
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pydantic
from pydantic import Field
from pydantic.alias_generators import to_camel

from slipway.api import jsonschemas, presets

GROUP = "slipway.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]

# Names the renderer sets on the container itself; a user value would silently lose.
RESERVED_ENV_NAMES = frozenset({"MODEL_NAME", "MODEL_VERSION", "MODEL_URI", "MODEL_DIGEST", "PORT"})

# Kubernetes-shaped patterns. Kept as plain strings so the CRD carries the same ones.
LABEL_VALUE = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUALIFIED_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # noqa: E501
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
IMAGE_REF = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"  # noqa: E501
URI = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^\s]+$"
DIGEST = r"^sha256:[a-f0-9]{64}$"
# A spec.model.uri that Slipway fetches in an init container (checked against its digest);
# any other scheme (file://, an image-baked model) is left to the model server, as before.
FETCHED_URI = r"^([hH][tT][tT][pP][sS]?|[sS]3)://"
FETCHED_SCHEMES_SHOWN = "http://, https:// and s3://"
# Where a fetched artifact is (the init container's emptyDir, read-only for the model server).
MODEL_MOUNT = "/mnt/models"
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE = r"^[\t\x20-\x7e]*$"  # printable ASCII and tab: no CR, LF or NUL
JSON_PATH = r"^\$((\.[A-Za-z_][A-Za-z0-9_-]*)|(\[[0-9]+\]))*$"
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
PERCENT_OR_INT = r"^(100|[1-9]?[0-9])%$"

# Headers that the HTTP client owns (letting a smoke test set them would break the request or
# change where it goes), and prefixes the API server reads as credentials or identity when a
# request goes through its proxy.
FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "te", "trailer",
    "keep-alive", "expect", "accept-encoding",
})
FORBIDDEN_HEADER_PREFIXES = ("proxy-", "impersonate-", "x-remote-")

# Pod annotations that change how a pod is run or secured: the Kubernetes-reserved domains
# (container.apparmor.security.beta.kubernetes.io/*, seccomp.security.alpha.kubernetes.io/*, ...)
# but for a few that only inform tools, and the keys container runtimes read (CRI-O's devices
# and user namespaces, crun's groups, Kata's sandbox settings). Slipway's pods are "restricted"
# whatever the spec says, so these are refused rather than passed through.
RESERVED_ANNOTATION_DOMAIN = r"^([^/]*[.])?(kubernetes[.]io|k8s[.]io)/"
ALLOWED_RESERVED_ANNOTATIONS = ("cluster-autoscaler.kubernetes.io/safe-to-evict",
                                "kubectl.kubernetes.io/default-container")
RUNTIME_ANNOTATION_PREFIXES = ("io.kubernetes.cri-o.", "io.kubernetes.cri.", "io.containerd.",
                               "run.oci.", "io.katacontainers.")
_ANNOTATION_MESSAGES = (
    "annotation keys under slipway.dev/ are reserved for Slipway",
    "annotation keys in the Kubernetes domains (kubernetes.io, k8s.io) change how a pod is run "
    "or secured (AppArmor, seccomp and the like); only "
    + ", ".join(ALLOWED_RESERVED_ANNOTATIONS) + " may be set",
    "annotation keys read by container runtimes ("
    + ", ".join(p + "*" for p in RUNTIME_ANNOTATION_PREFIXES) + ") are not allowed",
)


def annotation_key_problem(key: str) -> str | None:
    """Why a pod annotation key may not be set, or None when it may."""
    if key.startswith("slipway.dev/"):
        return _ANNOTATION_MESSAGES[0]
    if re.search(RESERVED_ANNOTATION_DOMAIN, key) and key not in ALLOWED_RESERVED_ANNOTATIONS:
        return _ANNOTATION_MESSAGES[1]
    if key.lower().startswith(RUNTIME_ANNOTATION_PREFIXES):
        return _ANNOTATION_MESSAGES[2]
    return None


def annotation_key_cel() -> list[dict[str, str]]:
    allowed = ", ".join(cel_string(key) for key in ALLOWED_RESERVED_ANNOTATIONS)
    runtime = " && ".join(f"!k.lowerAscii().startsWith({cel_string(prefix)})"
                          for prefix in RUNTIME_ANNOTATION_PREFIXES)
    return [
        cel("self.all(k, !k.startsWith('slipway.dev/'))", _ANNOTATION_MESSAGES[0]),
        cel(f"self.all(k, !k.matches({cel_string(RESERVED_ANNOTATION_DOMAIN)}) || k in "
            f"[{allowed}])", _ANNOTATION_MESSAGES[1]),
        cel(f"self.all(k, {runtime})", _ANNOTATION_MESSAGES[2]),
    ]


# Free-form JSON in a spec (request bodies, expected values, JSON Schemas, affinity): the CRD
# cannot bound what it does not describe, so these bounds are checked by `slipway validate` and
# by the operator. With them, and MAX_SPEC_BYTES for the whole, a spec stays far below the
# 1.5 MiB etcd allows an object (its ControllerRevision holds the spec and the pod template).
MAX_SPEC_BYTES = 128 * 1024
MAX_BODY_BYTES = 16 * 1024
MAX_EQUALS_BYTES = 4 * 1024
MAX_AFFINITY_BYTES = 16 * 1024
MAX_JSON_DEPTH = 32


def header_name_problem(name: str) -> str | None:
    """Why a smoke test may not set header ``name``, or None when it may."""
    lowered = name.lower()
    if lowered in FORBIDDEN_HEADERS:
        return f"header {name} is set by the HTTP client and cannot be overridden"
    if lowered.startswith("proxy-"):
        return f"header {name} is for proxies between client and server and cannot be sent"
    if lowered.startswith(FORBIDDEN_HEADER_PREFIXES):
        return f"header {name} is read by the API server as an identity and cannot be sent"
    return None



def cel(rule: str, message: str, *, field_path: str | None = None) -> dict[str, str]:
    """A CEL validation rule as the CRD schema carries it."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _extra(**kw: Any) -> dict[str, Any]:
    return {key.replace("_", "-"): value for key, value in kw.items()}


def cel_string(value: str) -> str:
    """A CEL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------------------------
# Paths that requests are sent to (smoke tests, the scoring path) or probed at. The operator
# appends them to a pod's or the API server proxy's base URL, so each one must provably stay
# under that base: no dot segments (an HTTP client or proxy resolves them, and
# ".../pods/x/proxy/../../.." is the API server's own API), no encodings of them, no encoded or
# back slashes, no fragment, no host. Each rule is checked by the CRD (CEL), by `slipway
# validate` and by the operator, with the same message.

_END = "{END}"  # end of text: "$" in RE2 (CEL), r"\Z" in Python (whose "$" allows a final "\n")

URL_PATH_RULES: tuple[tuple[str, bool, str], ...] = (
    # (regex with {END} for the end of text, must it match, message)
    (r"^/(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*"
     r"(?:[?](?:[A-Za-z0-9._~!$&'()*+,;=:@/?-]|%[0-9A-Fa-f]{2})*)?" + _END, True,
     "path must start with '/' and hold only letters, digits, -._~!$&'()*+,;=:@/? and %XX "
     "escapes (no spaces, backslashes, '#' or other characters)"),
    (r"//", False, "path must not contain '//' (an empty segment, or a host)"),
    (r"(?:^|/)[.][.]?(?:/|[?]|" + _END + ")", False,
     "path must not contain '.' or '..' segments"),
    (r"%(?:2[eEfF5]|5[cC]|[01][0-9a-fA-F]|7[fF])", False,
     "path must not percent-encode '.', '/', '\\', '%' or control characters"),
)

_URL_PATH_CHECKS = tuple((re.compile(rule.replace(_END, r"\Z")), must, message)
                         for rule, must, message in URL_PATH_RULES)


def url_path_problem(value: str) -> str | None:
    """Why ``value`` cannot be appended to a target's base URL, or None when it can."""
    for rule, must, message in _URL_PATH_CHECKS:
        if bool(rule.search(value)) != must:
            return message
    return None


def url_path_cel() -> list[dict[str, str]]:
    """The same rules as CEL (whose matches() is RE2, unanchored like re.search)."""
    return [cel(("" if must else "!") + f"self.matches({cel_string(rule.replace(_END, '$'))})",
                message) for rule, must, message in URL_PATH_RULES]


def _keys_checked(problem_of: Callable[[str], str | None]
                  ) -> Callable[[dict[str, str]], dict[str, str]]:
    """A validator refusing a map whose key ``problem_of`` finds a problem with."""
    def validate(mapping: dict[str, str]) -> dict[str, str]:
        for key in mapping:
            problem = problem_of(key)
            if problem is not None:
                raise ValueError(problem)
        return mapping
    return validate


def _checked_path(value: str | None) -> str | None:
    if value is not None:
        problem = url_path_problem(value)
        if problem is not None:
            raise ValueError(problem)
    return value


UrlPath = Annotated[str, Field(max_length=1024, json_schema_extra=_extra(
    x_kubernetes_validations=url_path_cel()))]

# A map's keys, checked by the CRD too (pydantic's key pattern becomes patternProperties, which
# a CRD may not have).
QUALIFIED_KEYS_RULE = cel("self.all(k, k.matches(" + cel_string(QUALIFIED_KEY) + "))",
                          "keys must be qualified names: an optional DNS prefix and '/', then "
                          "at most 63 letters, digits, '-', '_' or '.'")


Str63 = Annotated[str, Field(max_length=63)]
Str253 = Annotated[str, Field(max_length=253)]
LabelKey = Annotated[str, Field(max_length=317, pattern=QUALIFIED_KEY)]
LabelValue = Annotated[str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")]
Annotation = Annotated[str, Field(max_length=4096)]
Quantity = Annotated[int | str, Field(json_schema_extra=_extra(x_kubernetes_int_or_string=True))]
IntOrPercent = Annotated[int | str, Field(json_schema_extra=_extra(x_kubernetes_int_or_string=True))]
JsonObject = Annotated[
    dict[str, Any], Field(json_schema_extra=_extra(x_kubernetes_preserve_unknown_fields=True))
]


class Base(pydantic.BaseModel):
    """camelCase on the wire, unknown fields rejected, ``null`` means "the default"."""

    model_config = pydantic.ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    @pydantic.model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


# --------------------------------------------------------------------------------------------
# Quantities: parsed only to compare requests with limits offline; the API server stays the
# authority on their canonical form.

_SUFFIXES: dict[str, int | decimal.Decimal] = {
    "": 1, "n": decimal.Decimal("1e-9"), "u": decimal.Decimal("1e-6"), "m": decimal.Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")


def parse_quantity(value: int | str) -> decimal.Decimal:
    """Parse a Kubernetes resource quantity (``500m``, ``2Gi``, ``1e3``) into a Decimal."""
    if isinstance(value, int) and not isinstance(value, bool):
        return decimal.Decimal(value)
    match = _QUANTITY_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 500m, 2, 4Gi)")
    number, suffix = match.group(1), match.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return decimal.Decimal(number) * (decimal.Decimal(10) ** int(suffix[1:]))
    return decimal.Decimal(number) * decimal.Decimal(_SUFFIXES[suffix])


def _is_extended_resource(name: str) -> bool:
    return "/" in name and not name.startswith("kubernetes.io/")


# --------------------------------------------------------------------------------------------
# spec.model


class ModelRef(Base):
    """The artifact being released."""

    name: Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)] = Field(
        description="Model name; becomes the app.kubernetes.io/name label."
    )
    version: Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)] = Field(
        description="Model version; becomes the app.kubernetes.io/version label."
    )
    uri: Annotated[str, Field(max_length=2048, pattern=URI)] = Field(
        description="Where the artifact is (passed as MODEL_URI). http(s):// and s3:// are "
        f"fetched by Slipway before the server starts, into {MODEL_MOUNT} (MODEL_PATH), and "
        "checked against the digest; an s3:// URI ending in / is a folder. Any other scheme "
        "(file://, a model baked into the image) is the model server's to load."
    )
    digest: Annotated[str, Field(max_length=71)] | None = Field(
        default=None,
        description="Expected artifact digest, sha256:<64 lowercase hex> (passed as "
        "MODEL_DIGEST): a file's sha256, or a folder's manifest's (`slipway digest PATH`). "
        "Required for a fetched artifact unless insecureSkipDigest is true.",
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("self.matches('^sha256:[a-f0-9]{64}$')",
                    "digest must be sha256: followed by 64 lowercase hex characters")
            ]
        ),
    )
    insecure_skip_digest: bool | None = Field(
        default=None,
        description="Fetch the artifact without checking it (no digest): an explicit opt-out, "
        "for a fetched URI only.",
    )
    credentials_secret: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = (
        Field(default=None, description="A Secret in the ModelDeployment's namespace whose keys "
              "become the fetcher's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
              "AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL). Only the init container sees "
              "it: never the operator, never the model server. For a fetched URI only."))

    model_config = pydantic.ConfigDict(json_schema_extra=_extra(x_kubernetes_validations=[
        cel(f"!self.uri.matches({cel_string(FETCHED_URI)}) || has(self.digest) || "
            "(has(self.insecureSkipDigest) && self.insecureSkipDigest)",
            f"a digest is required for an artifact Slipway fetches ({FETCHED_SCHEMES_SHOWN}): "
            "set digest (slipway digest PATH), or insecureSkipDigest: true to fetch it "
            "unchecked", field_path=".digest"),
        cel("!(has(self.digest) && has(self.insecureSkipDigest) && self.insecureSkipDigest)",
            "set digest or insecureSkipDigest: true, not both", field_path=".insecureSkipDigest"),
        cel(f"self.uri.matches({cel_string(FETCHED_URI)}) || !has(self.insecureSkipDigest)",
            f"insecureSkipDigest is for an artifact Slipway fetches ({FETCHED_SCHEMES_SHOWN})",
            field_path=".insecureSkipDigest"),
        cel(f"self.uri.matches({cel_string(FETCHED_URI)}) || !has(self.credentialsSecret)",
            f"credentialsSecret is for an artifact Slipway fetches ({FETCHED_SCHEMES_SHOWN})",
            field_path=".credentialsSecret"),
    ]))

    @pydantic.field_validator("digest")
    @classmethod
    def _digest_format(cls, value: str | None) -> str | None:
        if value is not None and not re.match(DIGEST, value):
            raise ValueError("digest must be sha256: followed by 64 lowercase hex characters")
        return value

    @property
    def fetched(self) -> bool:
        """Whether Slipway fetches this artifact (an init container) before the server starts."""
        return re.match(FETCHED_URI, self.uri) is not None

    @pydantic.model_validator(mode="after")
    def _digest_policy(self) -> ModelRef:
        shown = FETCHED_SCHEMES_SHOWN
        if self.fetched:
            if self.digest is None and not self.insecure_skip_digest:
                raise ValueError(f"digest: required for an artifact Slipway fetches ({shown}): "
                                 "set digest (slipway digest PATH), or insecureSkipDigest: true "
                                 "to fetch it unchecked")
            if self.digest is not None and self.insecure_skip_digest:
                raise ValueError("insecureSkipDigest: set digest or insecureSkipDigest: true, "
                                 "not both")
            if self.uri.lower().startswith("s3://") and self.uri[5:].split("/", 1)[0] == "":
                raise ValueError(f"uri: {self.uri!r} names no bucket (s3://BUCKET/KEY)")
        else:
            if self.insecure_skip_digest is not None:
                raise ValueError(f"insecureSkipDigest: for an artifact Slipway fetches ({shown})")
            if self.credentials_secret is not None:
                raise ValueError(f"credentialsSecret: for an artifact Slipway fetches ({shown})")
        return self


# --------------------------------------------------------------------------------------------
# spec.runtime


class KeySelector(Base):
    """A key of a ConfigMap or Secret; the operator passes the reference and never reads it."""

    name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]
    key: Annotated[str, Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    optional: bool | None = None


class FieldSelector(Base):
    """A field of the pod (downward API), e.g. ``metadata.name`` or ``status.podIP``."""

    field_path: Annotated[str, Field(max_length=256)]


class ResourceFieldSelector(Base):
    """A resource of the container (downward API), e.g. ``limits.memory``."""

    resource: Annotated[str, Field(max_length=256)]
    divisor: Quantity | None = None


class EnvVarSource(Base):
    """Where a variable's value comes from: exactly one of the four."""

    config_map_key_ref: KeySelector | None = None
    secret_key_ref: KeySelector | None = None
    field_ref: FieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "valueFrom needs exactly one of configMapKeyRef, secretKeyRef, fieldRef, "
                "resourceFieldRef"
            )
        return self

    model_config = pydantic.ConfigDict(
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("[has(self.configMapKeyRef), has(self.secretKeyRef), has(self.fieldRef), "
                    "has(self.resourceFieldRef)].filter(x, x).size() == 1",
                    "valueFrom needs exactly one of configMapKeyRef, secretKeyRef, fieldRef, "
                    "resourceFieldRef")
            ]
        )
    )


class EnvVar(Base):
    """One environment variable: a value, or a reference passed through unread."""

    name: Annotated[str, Field(max_length=256, pattern=ENV_NAME)] = Field(
        description="Not one of the names Slipway sets (MODEL_*, PORT); unique in the list.")
    value: Annotated[str, Field(max_length=32768)] | None = Field(
        default=None, description="A literal value (or valueFrom, not both).")
    value_from: EnvVarSource | None = Field(
        default=None, description="A ConfigMap key, a Secret key or a pod field.")

    @pydantic.model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        if self.name in RESERVED_ENV_NAMES:
            raise ValueError(f"{self.name} is set by Slipway from spec.model/spec.runtime")
        return self

    model_config = pydantic.ConfigDict(
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both"),
                cel("!(self.name in ['MODEL_NAME', 'MODEL_VERSION', 'MODEL_URI', 'MODEL_DIGEST', "
                    "'PORT'])", "this variable is set by Slipway from spec.model/spec.runtime",
                    field_path=".name"),
            ]
        )
    )


class EnvFromSource(Base):
    """All keys of a ConfigMap or a Secret as variables (passed through, never read)."""

    prefix: Annotated[str, Field(max_length=256)] | None = None
    config_map_ref: NameRef | None = None
    secret_ref: NameRef | None = None

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("envFrom needs exactly one of configMapRef, secretRef")
        return self


class NameRef(Base):
    """A ConfigMap or Secret by name."""

    name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]
    optional: bool | None = None


class Resources(Base):
    """Container resources; extended resources such as ``nvidia.com/gpu`` are allowed. Requests
    may not exceed limits; an extended resource is a whole number set in limits (requests, if
    given, equal to limits)."""

    requests: Annotated[dict[LabelKey, Quantity], Field(max_length=16)] | None = None
    limits: Annotated[dict[LabelKey, Quantity], Field(max_length=16)] | None = None

    @pydantic.model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        requests = {k: parse_quantity(v) for k, v in (self.requests or {}).items()}
        limits = {k: parse_quantity(v) for k, v in (self.limits or {}).items()}
        for name, amount in {**requests, **limits}.items():
            if amount < 0:
                raise ValueError(f"{name}: a quantity must not be negative")
        for name, request in requests.items():
            if name in limits and request > limits[name]:
                raise ValueError(
                    f"requests.{name} ({self.requests[name]}) exceeds "  # type: ignore[index]
                    f"limits.{name} ({self.limits[name]})"  # type: ignore[index]
                )
            if _is_extended_resource(name):
                if name not in limits:
                    raise ValueError(f"extended resource {name} must be set in limits")
                if request != limits[name]:
                    raise ValueError(f"extended resource {name}: requests must equal limits")
        for name, limit in limits.items():
            if _is_extended_resource(name) and limit != limit.to_integral_value():
                raise ValueError(f"extended resource {name} must be a whole number")
        return self


class Runtime(Base):
    """The serving image that bundles the scoring script and its dependencies."""

    image: Annotated[str, Field(max_length=512, pattern=IMAGE_REF)] = Field(
        description="Serving image, by tag or by digest (repo@sha256:…)."
    )
    command: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=64)] | None = (
        Field(default=None, description="Replaces the image's entrypoint.")
    )
    args: Annotated[list[Annotated[str, Field(max_length=4096)]], Field(max_length=128)] | None = (
        Field(default=None, description="Replaces the image's default arguments.")
    )
    env: Annotated[list[EnvVar], Field(max_length=128)] = Field(
        default_factory=list,
        description="Variables: values, or references to ConfigMaps/Secrets/pod fields that are "
        "passed through unread. MODEL_NAME, MODEL_VERSION, MODEL_URI, MODEL_DIGEST and PORT are "
        "set by Slipway.",
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("self.all(e, self.exists_one(f, f.name == e.name))",
                    "env variable names must be unique")
            ]
        ),
    )
    env_from: Annotated[list[EnvFromSource], Field(max_length=16)] = Field(
        default_factory=list, description="Whole ConfigMaps/Secrets as variables (passed through)."
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=8080, description="Port the server listens on (also passed as PORT). Default 8080."
    )
    protocol: Literal["custom", "v2", "v1"] = Field(
        default="custom", description="Serving protocol preset. v2 (Open Inference Protocol: "
        "MLServer, KServe, Triton): probes /v2/models/{model.name}/ready and /v2/health/live, "
        "scoring /v2/models/{model.name}/infer, a V2 tensor schema. v1 (KServe V1): probes "
        "/v1/models/{model.name} and /, scoring /v1/models/{model.name}:predict, instances in "
        "and predictions out. custom (default): none. What the spec sets itself wins.")
    scoring_path: UrlPath = Field(
        default="/score", description="Path of the scoring endpoint. Default /score, or the "
        "protocol's."
    )
    resources: Resources | None = Field(default=None, description="Requests and limits.")
    run_as_user: Annotated[int, Field(ge=1, le=2147483647)] = Field(
        default=65532, description="Non-root UID the container runs as. Default 65532."
    )
    drain_seconds: Annotated[int, Field(ge=0, le=120)] = Field(
        default=5, description="Seconds a pod that is going away (replaced, reverted, scaled "
        "down) keeps serving before it is stopped: a preStop sleep, so that EndpointSlices, "
        "kube-proxy and ingresses stop routing to it first and no request in flight is cut. "
        "The termination grace period is 30 s on top. Default 5; 0 turns it off (needed on "
        "Kubernetes before 1.30, which has no sleep hook). Part of the pod template: a change "
        "rolls out as a new revision."
    )

    _scoring_path = pydantic.field_validator("scoring_path")(_checked_path)

    @pydantic.field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for var in env:
            if var.name in seen:
                raise ValueError(f"env variable {var.name} is set twice")
            seen.add(var.name)
        return env


# --------------------------------------------------------------------------------------------
# spec.placement


class Toleration(Base):
    """A taint the pods tolerate, as in a pod spec. Without a key, operator must be Exists;
    with Exists, no value."""

    key: Annotated[str, Field(max_length=317)] | None = Field(
        default=None, description="Taint key, e.g. nvidia.com/gpu.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Default Equal.")
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Unset: every effect.")
    toleration_seconds: int | None = Field(
        default=None, description="With NoExecute: how long the pod stays once tainted.")

    @pydantic.model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        if self.key is None and self.operator != "Exists":
            raise ValueError("a toleration without key needs operator Exists")
        return self


class Placement(Base):
    """Where and as whom the model pods run: GPU nodes, private registries, pod metadata."""

    node_selector: Annotated[dict[LabelKey, LabelValue], Field(max_length=32)] = Field(
        default_factory=dict, description="Node labels the pods require.",
        json_schema_extra=_extra(x_kubernetes_validations=[QUALIFIED_KEYS_RULE]),
    )
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(
        default_factory=list, description="Taints the pods tolerate (e.g. nvidia.com/gpu)."
    )
    affinity: JsonObject | None = Field(
        default=None,
        description="A Kubernetes Affinity object, passed through to the pod template (at most "
        "16 KiB as JSON, 32 levels deep).",
    )
    service_account_name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = (
        Field(default=None, description="ServiceAccount of the pods; when unset, the pods get no "
              "API token mounted.")
    )
    image_pull_secrets: Annotated[
        list[Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]], Field(max_length=16)
    ] = Field(default_factory=list, description="Names of Secrets used to pull the image.")
    pod_labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=32)] = Field(
        default_factory=dict,
        description="Extra pod labels (Slipway's own app.kubernetes.io/* and slipway.dev/* keys "
        "are reserved).",
        json_schema_extra=_extra(x_kubernetes_validations=[
            QUALIFIED_KEYS_RULE,
            cel("self.all(k, !k.startsWith('app.kubernetes.io/') && "
                "!k.startsWith('slipway.dev/'))",
                "label keys under app.kubernetes.io/ and slipway.dev/ are reserved for Slipway"),
        ]),
    )
    pod_annotations: Annotated[dict[LabelKey, Annotation], Field(max_length=32)] = Field(
        default_factory=dict,
        description="Extra pod annotations. Not under slipway.dev/, not in the Kubernetes "
        "domains (kubernetes.io, k8s.io and their subdomains: AppArmor, seccomp and the like) "
        "but for " + " and ".join(ALLOWED_RESERVED_ANNOTATIONS) + ", and none read by container "
        "runtimes (" + ", ".join(p + "*" for p in RUNTIME_ANNOTATION_PREFIXES) + "): the pod "
        "stays \"restricted\" whatever is set here.",
        json_schema_extra=_extra(x_kubernetes_validations=[
            QUALIFIED_KEYS_RULE, *annotation_key_cel()]),
    )
    priority_class_name: Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)] | None = (
        Field(default=None, description="PriorityClass of the pods; not a system- one.",
              json_schema_extra=_extra(x_kubernetes_validations=[
                  cel("!self.startsWith('system-')",
                      "system- priority classes are for the cluster's own components")])))

    @pydantic.field_validator("affinity")
    @classmethod
    def _bounded_affinity(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return value if value is None else _bounded_json(value, MAX_AFFINITY_BYTES)

    _labels = pydantic.field_validator("pod_labels")(_keys_checked(
        lambda key: f"label {key} is reserved for Slipway"
        if key.startswith(("app.kubernetes.io/", "slipway.dev/")) else None))
    _annotations = pydantic.field_validator("pod_annotations")(
        _keys_checked(annotation_key_problem))

    @pydantic.field_validator("priority_class_name")
    @classmethod
    def _no_system_priority(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("system-"):
            raise ValueError("system- priority classes are for the cluster's own components")
        return value


# --------------------------------------------------------------------------------------------
# spec.probes


class Probe(Base):
    """An HTTP probe with the kubelet's timings."""

    path: UrlPath
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        default=None, description="Defaults to spec.runtime.port."
    )
    initial_delay_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    period_seconds: Annotated[int, Field(ge=1, le=3600)] = 10
    timeout_seconds: Annotated[int, Field(ge=1, le=3600)] = 1
    success_threshold: Annotated[int, Field(ge=1, le=100)] = 1
    failure_threshold: Annotated[int, Field(ge=1, le=10000)] = 3

    _path = pydantic.field_validator("path")(_checked_path)


class Probes(Base):
    """Health probes. Defaults suit a server that loads its model slowly: a startup probe allows
    up to 10 minutes before liveness starts counting, instead of a long initial delay."""

    readiness: Probe = Field(
        default_factory=lambda: Probe(path="/readyz", period_seconds=5, timeout_seconds=2,
                                      failure_threshold=3),
        description="Default: GET /readyz every 5 s, timeout 2 s, 3 failures.",
    )
    liveness: Probe = Field(
        default_factory=lambda: Probe(path="/healthz", period_seconds=10, timeout_seconds=2,
                                      failure_threshold=3),
        description="Default: GET /healthz every 10 s, timeout 2 s, 3 failures.",
    )
    startup: Probe = Field(
        default_factory=lambda: Probe(path="/healthz", period_seconds=5, timeout_seconds=2,
                                      failure_threshold=120),
        description="Default: GET /healthz every 5 s, up to 120 failures (10 minutes).",
    )

    @pydantic.model_validator(mode="after")
    def _single_success(self) -> Probes:
        for name in ("liveness", "startup"):
            if getattr(self, name).success_threshold != 1:
                raise ValueError(f"{name}.successThreshold must be 1 (a Kubernetes rule)")
        return self

    model_config = pydantic.ConfigDict(
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("!has(self.liveness) || !has(self.liveness.successThreshold) || "
                    "self.liveness.successThreshold == 1",
                    "liveness.successThreshold must be 1", field_path=".liveness"),
                cel("!has(self.startup) || !has(self.startup.successThreshold) || "
                    "self.startup.successThreshold == 1",
                    "startup.successThreshold must be 1", field_path=".startup"),
            ]
        )
    )


# --------------------------------------------------------------------------------------------
# spec.schema and spec.smokeTests


def check_json_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Reject a JSON Schema that is invalid, or one Slipway will not evaluate: see
    ``jsonschemas`` (only local $refs, RE2 patterns, bounded size and expansion)."""
    if value is None:
        return None
    try:
        jsonschemas.compiled(value)
    except jsonschemas.SchemaProblem as problem:
        raise ValueError(f"{problem.message} (at {problem.where} of the schema)") from None
    return value


def _bounded_json(value: Any, max_bytes: int) -> Any:
    problem = jsonschemas.json_value_problem(value, max_bytes=max_bytes, max_depth=MAX_JSON_DEPTH)
    if problem is not None:
        raise ValueError(problem)
    return value


class IOSchema(Base):
    """The request/response contract, as JSON Schemas (draft 2020-12 unless ``$schema`` says)."""

    input: JsonObject = Field(description="JSON Schema every scoring request must satisfy."
                              + " Only local $refs (no recursion), RE2 patterns; at most 32 KiB as JSON, 32 levels "
        "deep, 5,000 subschemas with $refs followed.")
    output: JsonObject = Field(description="JSON Schema every scoring response must satisfy."
                               + " Only local $refs (no recursion), RE2 patterns; at most 32 KiB as JSON, 32 levels "
        "deep, 5,000 subschemas with $refs followed.")

    @pydantic.field_validator("input", "output")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any]) -> dict[str, Any] | None:
        return check_json_schema(value)


class Tolerance(Base):
    """How far two numbers may be apart and still agree: |a - b| <= max(absolute, relative *
    max(|a|, |b|)). NaN agrees with nothing; strings, booleans and null stay exact."""

    absolute: Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)] | None = Field(
        default=None, description="Largest absolute difference. Default 0.")
    relative: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = Field(
        default=None, description="Largest difference relative to the larger magnitude "
        "(0.01: 1 %). Default 0.")

    model_config = pydantic.ConfigDict(json_schema_extra=_extra(x_kubernetes_validations=[
        cel("has(self.absolute) || has(self.relative)",
            "a tolerance needs absolute, relative or both")]))

    @pydantic.model_validator(mode="after")
    def _something(self) -> Tolerance:
        if self.absolute is None and self.relative is None:
            raise ValueError("a tolerance needs absolute, relative or both")
        return self


def _numbers_only(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, list) and bool(value) and all(_numbers_only(v) for v in value)


class ExpectedValue(Base):
    """A value at a JSON path of the response body: exact, or numbers within a tolerance."""

    path: Annotated[str, Field(max_length=256, pattern=JSON_PATH)] = Field(
        description="A path such as $.predictions[0].label."
    )
    equals: Any = Field(
        description="The value expected there (any JSON value; at most 4 KiB as JSON, 32 levels "
        "deep).",
        json_schema_extra=_extra(x_kubernetes_preserve_unknown_fields=True),
    )

    tolerance: Tolerance | None = Field(
        default=None, description="Compare within this tolerance instead of exactly; "
        "`equals` must then be a number or an array of numbers (nested arrays too).")

    @pydantic.field_validator("equals")
    @classmethod
    def _bounded_equals(cls, value: Any) -> Any:
        return _bounded_json(value, MAX_EQUALS_BYTES)

    @pydantic.model_validator(mode="after")
    def _tolerance_for_numbers(self) -> ExpectedValue:
        if self.tolerance is not None and not _numbers_only(self.equals):
            raise ValueError(f"{self.path}: a tolerance compares numbers: equals must be a "
                             "number or an array of numbers")
        return self


class Expectation(Base):
    """What the answer must be; checked in this order, stopping at the first failure."""

    status: int = Field(
        default=200,
        description="Expected HTTP status code (100–599). Default 200.",
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("self >= 100 && self <= 599", "status must be an HTTP status code (100-599)")
            ]
        ),
    )
    body_schema: JsonObject | None = Field(
        default=None,
        description="JSON Schema of the response body. Defaults to spec.schema.output when the "
        "test targets the scoring path and expects a 2xx status." + " Only local $refs (no recursion), RE2 patterns; at most 32 KiB as JSON, 32 levels "
        "deep, 5,000 subschemas with $refs followed.",
    )
    values: Annotated[list[ExpectedValue], Field(max_length=32)] = Field(
        default_factory=list, description="Exact values at JSON paths of the response body."
    )
    max_latency_ms: Annotated[int, Field(ge=1, le=600000)] | None = Field(
        default=None, description="Latency budget of one request, in milliseconds."
    )

    @pydantic.field_validator("status")
    @classmethod
    def _status_code(cls, value: int) -> int:
        if not 100 <= value <= 599:
            raise ValueError("status must be an HTTP status code (100-599)")
        return value

    @pydantic.field_validator("body_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return check_json_schema(value)


class SmokeTest(Base):
    """One sample request and what its answer must be."""

    name: Annotated[str, Field(max_length=63, pattern=DNS_LABEL)]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = Field(
        default="POST", description="Default POST."
    )
    path: UrlPath | None = Field(
        default=None,
        description="Path (and query) appended to the pod's or Service's address; never a host, "
        "a scheme, a fragment or a '.'/'..' segment. Defaults to spec.runtime.scoringPath.",
    )
    headers: Annotated[dict[Annotated[str, Field(max_length=256, pattern=HEADER_NAME)], Annotated[
        str, Field(max_length=4096, pattern=HEADER_VALUE)]], Field(max_length=32)] = Field(
        default_factory=dict,
        description="Request headers (printable ASCII values). Host, Content-Length, "
        "Transfer-Encoding, Connection, Upgrade, TE, Trailer, Keep-Alive, Expect, Accept-Encoding "
        "and Proxy-* belong to the HTTP client, Impersonate-* and X-Remote-* to the API server.",
        json_schema_extra=_extra(x_kubernetes_validations=[
            cel("self.all(k, k.matches(" + cel_string(HEADER_NAME) + ") && !(k.lowerAscii() in ["
                + ", ".join(f"'{name}'" for name in sorted(FORBIDDEN_HEADERS)) + "]) && "
                + " && ".join(f"!k.lowerAscii().startsWith('{prefix}')"
                              for prefix in FORBIDDEN_HEADER_PREFIXES) + ")",
                "a header name must be an HTTP token and not one the HTTP client or the API "
                "server owns (Host, Content-Length, Transfer-Encoding, Connection, Upgrade, TE, "
                "Trailer, Keep-Alive, Expect, Accept-Encoding, Proxy-*, Impersonate-*, "
                "X-Remote-*)"),
        ]))
    body: Any = Field(
        default=None,
        description="JSON request body (at most 16 KiB as JSON, 32 levels deep).",
        json_schema_extra=_extra(x_kubernetes_preserve_unknown_fields=True),
    )
    expect: Expectation = Field(default_factory=Expectation)

    _path = pydantic.field_validator("path")(_checked_path)

    @pydantic.field_validator("body")
    @classmethod
    def _bounded_body(cls, value: Any) -> Any:
        return _bounded_json(value, MAX_BODY_BYTES)

    _headers = pydantic.field_validator("headers")(_keys_checked(header_name_problem))


# --------------------------------------------------------------------------------------------
# spec.rollout and spec.rollback


class AgreementPath(Base):
    """A JSON path whose value must be the same in both revisions' answers."""

    path: Annotated[str, Field(max_length=256, pattern=JSON_PATH)] = Field(
        description="A path such as $.predictions: where it leads to an array, each element is "
        "one compared item (one instance of a batch)."
    )
    tolerance: Tolerance | None = Field(
        default=None, description="For the numbers found there (scores, probabilities); "
        "labels and other strings are always compared exactly. Default: exact.")


class Agreement(Base):
    """Agreement with the serving revision: while a release rolls out, the rollback target's
    pods still serve, so each smoke test below goes to one of them and to the new pod, and the
    two answers are compared at the paths named."""

    paths: Annotated[list[AgreementPath], Field(min_length=1, max_length=16)] = Field(
        description="Where the answers are compared.")
    min_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        default=1.0, description="Share of compared items that must agree (0 to 1). Default 1: "
        "every item.")
    tests: Annotated[list[Annotated[str, Field(max_length=63)]], Field(max_length=32)] | None = \
        Field(default=None, description="Names of the smoke tests whose answers are compared. "
              "Default: every test sent to the scoring path that expects a 2xx status.")


class Rollout(Base):
    """How a new revision rolls out and how its smoke tests are sent."""

    progress_deadline_seconds: Annotated[int, Field(ge=10, le=86400)] = Field(
        default=600, description="Seconds a rollout may make no progress before it fails. "
        "Default 600."
    )
    max_surge: IntOrPercent = Field(
        default="25%", description="Extra pods during a rollout (number or percent). Default "
        "25% (1 pod for up to 4 replicas): new pods get no traffic before they pass their smoke "
        "tests, so surge costs only scheduling room."
    )
    max_unavailable: IntOrPercent = Field(
        default=0, description="Pods that may be missing during a rollout. Default 0: the old "
        "pods serve until new ones have passed, and a revert finds them still there."
    )
    smoke_test_timeout_seconds: Annotated[int, Field(ge=1, le=600)] = Field(
        default=10, description="Timeout of one smoke-test request. Default 10."
    )
    smoke_test_attempts: Annotated[int, Field(ge=1, le=10)] = Field(
        default=3, description="Tries when a smoke test could not be sent (not when it failed). "
        "Default 3."
    )
    verification_deadline_seconds: Annotated[int, Field(ge=5, le=3600)] = Field(
        default=120, description="Wall time one verification (every smoke test against every "
        "target, retries included) may take; a check still waiting for its answer then fails. "
        "Default 120."
    )

    @pydantic.field_validator("max_surge", "max_unavailable")
    @classmethod
    def _int_or_percent(cls, value: int | str) -> int | str:
        if isinstance(value, bool):
            raise ValueError("must be a number or a percentage")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("must not be negative")
        elif not re.match(PERCENT_OR_INT, value):
            raise ValueError("must be a whole number or a percentage from 0% to 100%")
        return value

    @pydantic.model_validator(mode="after")
    def _can_progress(self) -> Rollout:
        if str(self.max_surge) in ("0", "0%") and str(self.max_unavailable) in ("0", "0%"):
            raise ValueError("maxSurge and maxUnavailable cannot both be 0")
        return self

    model_config = pydantic.ConfigDict(
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("!(has(self.maxSurge) && string(self.maxSurge) in ['0', '0%'] && "
                    "(!has(self.maxUnavailable) || string(self.maxUnavailable) in ['0', '0%']))",
                    "maxSurge and maxUnavailable cannot both be 0")
            ]
        )
    )


class Rollback(Base):
    """The way back: automatic revert to the last verified revision, and how many to keep."""

    automatic: bool = Field(
        default=True, description="Revert to the rollback target when a release fails. Default true."
    )
    revision_history_limit: Annotated[int, Field(ge=1, le=100)] = Field(
        default=5, description="Verified revisions kept (and ReplicaSets kept). Default 5."
    )


# --------------------------------------------------------------------------------------------
# The spec


class ModelDeploymentSpec(Base):
    """A model release: artifact, runtime, contract, probes, smoke tests and a way back."""

    model: ModelRef
    runtime: Runtime
    schema_: IOSchema = Field(alias="schema")
    smoke_tests: Annotated[list[SmokeTest], Field(min_length=1, max_length=32)] = Field(
        description="Requests sent to every new revision before it is called Ready.",
        json_schema_extra=_extra(
            x_kubernetes_validations=[
                cel("self.all(t, self.exists_one(u, u.name == t.name))",
                    "smoke test names must be unique")
            ]
        ),
    )
    replicas: Annotated[int, Field(ge=0, le=1000)] | None = Field(
        default=None,
        description="Pod count. When unset, the Deployment's replica count is left to an "
        "autoscaler and never overwritten.",
    )
    placement: Placement = Field(default_factory=Placement)
    probes: Probes = Field(default_factory=Probes)
    agreement: Agreement | None = Field(
        default=None, description="Compare each new pod's answers with the serving revision's "
        "(a 200 with a valid schema can still be a broken model). A release below minRate "
        "fails as PredictionsDisagree.")
    rollout: Rollout = Field(default_factory=Rollout)
    rollback: Rollback = Field(default_factory=Rollback)

    @pydantic.field_validator("smoke_tests")
    @classmethod
    def _unique_names(cls, tests: list[SmokeTest]) -> list[SmokeTest]:
        seen: set[str] = set()
        for test in tests:
            if test.name in seen:
                raise ValueError(f"smoke test name {test.name!r} is used twice")
            seen.add(test.name)
        return tests

    @staticmethod
    def _crd_schema(schema: dict[str, Any]) -> None:
        # spec.schema may be left to a protocol preset: required by CEL for `custom` only
        schema["required"] = [name for name in schema.get("required", []) if name != "schema"]
        schema["x-kubernetes-validations"] = [
            cel("!has(self.agreement) || !has(self.agreement.tests) || "
                "self.agreement.tests.all(n, self.smokeTests.exists(t, t.name == n))",
                "agreement.tests must name smoke tests of spec.smokeTests"),
            cel(f"!self.model.uri.matches({cel_string(FETCHED_URI)}) || "
                "!has(self.runtime.env) || self.runtime.env.all(e, e.name != 'MODEL_PATH')",
                "MODEL_PATH is set by Slipway for an artifact it fetches (the file or folder "
                f"under {MODEL_MOUNT})", field_path=".runtime.env"),
            cel("has(self.schema) || (has(self.runtime.protocol) && "
                "self.runtime.protocol != 'custom')",
                "schema is required unless runtime.protocol (v2, v1) gives one",
                field_path=".schema")]

    model_config = pydantic.ConfigDict(json_schema_extra=_crd_schema)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _protocol_preset(cls, data: Any) -> Any:
        """runtime.protocol v2/v1: the probes, scoring path and schema the spec leaves out."""
        filled = presets.apply(data)
        if isinstance(filled, dict) and filled.get("schema") is None and \
                isinstance(filled.get("runtime"), dict):
            protocol = filled["runtime"].get("protocol")
            if protocol in (None, "custom"):
                raise ValueError("schema: required (or runtime.protocol: v2 or v1, whose "
                                 "preset gives one)")
        return filled

    @pydantic.model_validator(mode="after")
    def _model_path_is_ours(self) -> ModelDeploymentSpec:
        if self.model.fetched and any(var.name == "MODEL_PATH" for var in self.runtime.env):
            raise ValueError("runtime.env: MODEL_PATH is set by Slipway for an artifact it "
                             f"fetches (the file or folder under {MODEL_MOUNT})")
        return self

    @pydantic.model_validator(mode="after")
    def _agreement_tests_exist(self) -> ModelDeploymentSpec:
        if self.agreement is not None and self.agreement.tests is not None:
            names = {test.name for test in self.smoke_tests}
            unknown = [name for name in self.agreement.tests if name not in names]
            if unknown:
                raise ValueError(f"agreement.tests names no smoke test {unknown[0]!r}")
            if not self.agreement.tests:
                raise ValueError("agreement.tests is empty: leave it out for the default")
        return self

    def agreement_tests(self) -> list[SmokeTest]:
        """The smoke tests whose answers are compared with the serving revision's."""
        if self.agreement is None:
            return []
        if self.agreement.tests is not None:
            chosen = set(self.agreement.tests)
            return [test for test in self.smoke_tests if test.name in chosen]
        return [test for test in self.smoke_tests
                if self.targets_scoring(test) and 200 <= test.expect.status < 300]

    def test_path(self, test: SmokeTest) -> str:
        return test.path or self.runtime.scoring_path

    def body_schema_for(self, test: SmokeTest) -> dict[str, Any] | None:
        """The schema a test's response must satisfy (its own, or the output contract)."""
        if test.expect.body_schema is not None:
            return test.expect.body_schema
        if self.targets_scoring(test) and 200 <= test.expect.status < 300:
            return self.schema_.output
        return None

    def targets_scoring(self, test: SmokeTest) -> bool:
        return self.test_path(test).split("?", 1)[0] == self.runtime.scoring_path


# --------------------------------------------------------------------------------------------
# Status: declared in full so the API server prunes nothing the operator writes.

Phase = Literal[
    "Pending", "Progressing", "Verifying", "Ready", "Failed", "RollingBack", "RolledBack",
    "Invalid",
]


class Condition(Base):
    """A Kubernetes condition: Ready, Reconciling, Stalled or RolledBack."""

    type: Annotated[str, Field(max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(max_length=1024)] = Field(description="CamelCase cause.")
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="What happened, for an admin to act on.")
    last_transition_time: Annotated[str, Field(max_length=64)] = Field(
        description="When status last changed (not when it was last checked).")
    observed_generation: int | None = Field(
        default=None, description="The generation this condition describes.")


class RollbackTarget(Base):
    """The last revision that passed its smoke tests, kept as a ControllerRevision."""

    revision: Annotated[str, Field(max_length=63)]
    controller_revision: Annotated[str, Field(max_length=253)] | None = None
    generation: int | None = None
    model_version: Annotated[str, Field(max_length=63)] | None = None
    image: Annotated[str, Field(max_length=512)] | None = None
    verified_at: Annotated[str, Field(max_length=64)] | None = None


class SmokeTestResult(Base):
    """One smoke test against one target (a pod, or the Service)."""

    name: Annotated[str, Field(max_length=63)]
    target: Annotated[str, Field(max_length=512)]
    outcome: Literal["Passed", "Failed", "Error"]
    status_code: int | None = None
    latency_ms: int | None = None
    message: Annotated[str, Field(max_length=2048)] = ""


class PodResult(Base):
    """One pod's own smoke tests, sent to it behind its readiness gate."""

    pod: Annotated[str, Field(max_length=253)]
    outcome: Literal["Passed", "Failed", "Error"]
    message: Annotated[str, Field(max_length=1024)] = ""
    at: Annotated[str, Field(max_length=64)] | None = None


class PodVerdict(PodResult):
    """A pod's verdict, with the revision and generation it was for."""

    revision: Annotated[str, Field(max_length=63)]
    generation: int | None = None


class PodVerification(Base):
    """The newest per-pod verdicts (at most 32), whatever revision they were for."""

    pods: Annotated[list[PodVerdict], Field(max_length=32)] = Field(default_factory=list)


class LastSmokeTest(Base):
    """The last verdict: which revision, for which generation, and what each request gave."""

    revision: Annotated[str, Field(max_length=63)]
    generation: int | None = None
    outcome: Literal["Passed", "Failed", "Error"]
    message: Annotated[str, Field(max_length=4096)] = ""
    started_at: Annotated[str, Field(max_length=64)] | None = None
    finished_at: Annotated[str, Field(max_length=64)] | None = None
    attempts: int | None = None
    checks: Annotated[str, Field(max_length=16)] | None = Field(
        default=None, description="What the verdict rests on besides the pods (the tests, the "
        "contract): a later generation that changes neither keeps it.")
    results: Annotated[list[SmokeTestResult], Field(max_length=64)] = Field(default_factory=list)
    pods: Annotated[list[PodResult], Field(max_length=32)] = Field(
        default_factory=list, description="Each pod's own smoke tests in this release, sent to "
        "it before its readiness gate opened (newest last).")


class LastFailure(Base):
    """The failed release: blocked until the spec changes or the retry annotation does."""

    revision: Annotated[str, Field(max_length=63)]
    generation: int | None = None
    reason: Annotated[str, Field(max_length=128)]
    message: Annotated[str, Field(max_length=4096)] = ""
    retry_token: Annotated[str, Field(max_length=253)] = ""
    rollback_failed: bool | None = None
    rollback_message: Annotated[str, Field(max_length=4096)] | None = None


class HistoryEntry(Base):
    """One verdict in the release history (newest last, bounded)."""

    revision: Annotated[str, Field(max_length=63)]
    generation: int | None = None
    model_version: Annotated[str, Field(max_length=63)] | None = None
    image: Annotated[str, Field(max_length=512)] | None = None
    outcome: Annotated[str, Field(max_length=64)]
    reason: Annotated[str, Field(max_length=128)] | None = None
    at: Annotated[str, Field(max_length=64)]


class Announcement(Base):
    """An Event decided with the status it sits in, not yet known to be posted."""

    key: Annotated[str, Field(max_length=64)]
    type: Annotated[str, Field(max_length=16)]
    reason: Annotated[str, Field(max_length=128)]
    message: Annotated[str, Field(max_length=1024)] = ""
    cause: Annotated[str, Field(max_length=128)] | None = None


class ModelDeploymentStatus(Base):
    """Written by the operator only: everything it knows, for kubectl, Argo CD and Flux."""

    phase: Phase | None = Field(default=None, description="Where the release is in its lifecycle.")
    observed_generation: int | None = Field(
        default=None, description="The generation this status describes.")
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list, description="Ready, Reconciling, Stalled, RolledBack.")
    current_revision: Annotated[str, Field(max_length=63)] | None = Field(
        default=None, description="The revision the Deployment serves.")
    desired_revision: Annotated[str, Field(max_length=63)] | None = Field(
        default=None, description="The revision the spec renders to.")
    ready_replicas: int | None = Field(default=None, description="From the Deployment.")
    replicas: int | None = Field(default=None, description="From the Deployment.")
    rollback_target: RollbackTarget | None = Field(
        default=None, description="The last verified revision: where a failed release goes back.")
    last_failure: LastFailure | None = Field(
        default=None, description="The failed release, not retried until the spec or the "
        "slipway.dev/retry annotation changes.")
    last_smoke_test: LastSmokeTest | None = Field(
        default=None, description="The last release's smoke-test verdict (kept through a "
        "revert: the rollback target's re-check goes to rollbackCheck).")
    rollback_check: LastSmokeTest | None = Field(
        default=None, description="The rollback target's re-check after a revert.")
    verified_pods: Annotated[str, Field(max_length=32)] | None = Field(
        default=None, description="Pods of the serving revision whose readiness gate is open, "
        "of all its pods (\"2/3\").")
    pod_verification: PodVerification | None = Field(
        default=None, description="The newest per-pod verdicts (a pod gets traffic only once "
        "its own smoke tests passed).")
    history: Annotated[list[HistoryEntry], Field(max_length=32)] = Field(
        default_factory=list, description="Verdicts, newest last (at most 20 kept).")
    announcements: Annotated[list[Announcement], Field(max_length=32)] = Field(
        default_factory=list, description="The outbox: Events recorded with a decision and "
        "not yet posted (empty once they are; a restarted operator posts what it finds).")


EnvFromSource.model_rebuild()
