"""Build (once) and cache the control-plane binaries Slipway's integration tests need.

Why this exists
---------------
The integration tests run a real etcd + kube-apiserver (+ controller-manager, scheduler) and
use kubectl.  The usual sources for those binaries (envtest tarballs on GCS, dl.k8s.io,
container images) are not reachable from the development/CI sandbox, but the Go module
proxy is.  So we compile them from source:

* etcd from ``go.etcd.io/etcd/server/v3`` (its module root is the ``etcd`` main package).
* kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from
  ``k8s.io/kubernetes``.  ``go install k8s.io/kubernetes/...@vX`` is refused because the
  kubernetes go.mod replaces its ``k8s.io/*`` staging modules with ``./staging/...``
  directories.  We therefore generate a small wrapper module that requires
  ``k8s.io/kubernetes vX.Y.Z`` and replaces every staging module by its published
  ``v0.Y.Z`` tag (the list is derived from kubernetes' real go.mod), copies its ``go`` and
  ``godebug`` lines, names the four commands as ``tool`` directives (so ``go mod tidy``
  resolves their imports) and builds all four in one ``go build``.

Results are cached by version under ``${XDG_CACHE_HOME:-~/.cache}/slipway/``::

    bin/k8s-v1.36.3/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl}
    bin/etcd-v3.6.16/etcd
    go/mod, go/build      GOMODCACHE / GOCACHE (stable, so rebuilds are fast)
    src/...               generated wrapper modules

If ``KUBEBUILDER_ASSETS`` names a folder with envtest binaries (etcd, kube-apiserver,
kubectl), those are used and only the missing commands are built.

Usage::

    from slipway_dev.binaries import ensure_binaries
    paths = ensure_binaries()          # {"etcd": Path(...), "kube-apiserver": Path(...), ...}

    PYTHONPATH=operator python -m slipway_dev.binaries
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator, Sequence, TypeVar

K8S_VERSION: str = os.environ.get("SLIPWAY_K8S_VERSION", "v1.36.3")
ETCD_VERSION: str = os.environ.get("SLIPWAY_ETCD_VERSION", "v3.6.16")
# Tried in order (after K8S_VERSION) when the proxy lacks part of a release's closure.
# Only used when SLIPWAY_K8S_VERSION is not set explicitly.
K8S_FALLBACK_VERSIONS: tuple[str, ...] = ("v1.37.2", "v1.36.1")
ETCD_FALLBACK_VERSIONS: tuple[str, ...] = ("v3.6.15", "v3.6.14", "v3.6.13")
# The one toolchain we may switch to when a module needs a newer Go than the local one.
APPROVED_TOOLCHAIN: str = "go1.27.3"

K8S_MODULE = "k8s.io/kubernetes"
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
K8S_COMMANDS: tuple[str, ...] = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
)
ALL_BINARIES: tuple[str, ...] = ("etcd",) + K8S_COMMANDS
_K8S_PACKAGES: dict[str, str] = {name: f"{K8S_MODULE}/cmd/{name}" for name in K8S_COMMANDS}

HEARTBEAT_SECONDS = 10.0
_T = TypeVar("_T")
_PREFIX = "[binaries]"


class BinariesError(RuntimeError):
    """Raised when a binary cannot be obtained (proxy gap, compile error, ...)."""


# --------------------------------------------------------------------------- paths / env


def cache_root() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "slipway"


def _bin_dir(kind: str, version: str) -> pathlib.Path:
    return cache_root() / "bin" / f"{kind}-{version}"


def _go_exe() -> str:
    found = shutil.which("go")
    if found:
        return found
    for cand in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
        if os.access(cand, os.X_OK):
            return cand
    raise BinariesError("no `go` executable found on PATH (needed to build etcd/kubernetes)")


def _go_env(toolchain: str = "local") -> dict[str, str]:
    root = cache_root()
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(root / "go" / "mod"),
        GOCACHE=str(root / "go" / "build"),
        GOTOOLCHAIN=toolchain,
        CGO_ENABLED="0",
        GO111MODULE="on",
        GOWORK="off",
        GOFLAGS="-mod=mod -buildvcs=false",
    )
    return env


def _parse_go_version(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return (0,)
    return tuple(int(x) for x in m.groups(default="0"))


def _local_go_version() -> str:
    out = subprocess.run(
        [_go_exe(), "env", "GOVERSION"], capture_output=True, text=True,
        env=_go_env(), check=False,
    )
    return out.stdout.strip() or "go0"


def _toolchain_for(go_line: str, verbose: bool) -> str:
    """Return the GOTOOLCHAIN value needed for a module whose go.mod says ``go <go_line>``."""
    local = _local_go_version()
    if _parse_go_version(go_line) <= _parse_go_version(local):
        return "local"
    if _parse_go_version(go_line) > _parse_go_version(APPROVED_TOOLCHAIN):
        raise BinariesError(
            f"module needs go {go_line}, newer than local {local} and the approved "
            f"toolchain {APPROVED_TOOLCHAIN}"
        )
    _log(verbose, f"module needs go {go_line} > local {local}: using GOTOOLCHAIN="
         f"{APPROVED_TOOLCHAIN}")
    return APPROVED_TOOLCHAIN


# --------------------------------------------------------------------------- logging / run


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"{_PREFIX} {msg}", file=sys.stderr, flush=True)


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


_MISSING_RE = re.compile(
    r"(?P<mod>[\w.\-/~]+@v[\w.\-+]+)\s*:.*?"
    r"(403|404|410|not found|not available|unknown revision|invalid version|no matching versions)",
    re.IGNORECASE,
)


def _missing_module(lines: Sequence[str]) -> str | None:
    for line in lines:
        m = _MISSING_RE.search(line)
        if m:
            return m.group("mod")
    return None


def _run_go(
    args: Sequence[str], *, cwd: pathlib.Path, what: str, verbose: bool, toolchain: str = "local"
) -> None:
    """Run ``go <args>``, forwarding output to stderr with a heartbeat; raise on failure."""
    cmd = [_go_exe(), *args]
    tail: collections.deque[str] = collections.deque(maxlen=60)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=_go_env(toolchain), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, bufsize=1,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if verbose:
                sys.stderr.write("    " + line)
                sys.stderr.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while True:
        try:
            rc = proc.wait(timeout=HEARTBEAT_SECONDS)
            break
        except subprocess.TimeoutExpired:
            _log(verbose, f"… still {what} ({_fmt(time.monotonic() - start)} elapsed)")
        except KeyboardInterrupt:
            proc.kill()
            raise
    reader.join(timeout=5)
    elapsed = time.monotonic() - start
    if rc != 0:
        missing = _missing_module(tail)
        detail = "\n".join(f"    {line}" for line in list(tail)[-25:])
        if missing:
            raise BinariesError(
                f"{what} failed: the module proxy does not serve {missing}\n"
                f"  command: {' '.join(cmd)} (in {cwd})\n{detail}"
            )
        raise BinariesError(f"{what} failed (exit {rc})\n  command: {' '.join(cmd)} "
                            f"(in {cwd})\n{detail}")
    _log(verbose, f"{what}: done in {_fmt(elapsed)}")


@contextlib.contextmanager
def _lock(verbose: bool) -> Iterator[None]:
    """Serialize builds across processes (e.g. parallel pytest workers)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(verbose, "another process is building; waiting for its lock…")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- go.mod helpers


def _download_gomod(module: str, version: str, verbose: bool) -> str:
    """Return the text of ``module@version``'s go.mod (fetched via the module proxy)."""
    gomod = cache_root() / "go" / "mod" / "cache" / "download"
    path = gomod.joinpath(*_escape_path(module).split("/"), "@v", f"{version}.mod")
    if not path.is_file():
        _log(verbose, f"fetching go.mod of {module}@{version}")
        proc = subprocess.run(
            [_go_exe(), "mod", "download", "-json", f"{module}@{version}"],
            capture_output=True, text=True, env=_go_env(), cwd=cache_root(), check=False,
        )
        if proc.returncode != 0 or not path.is_file():
            msg = (proc.stdout + proc.stderr).strip()
            with contextlib.suppress(ValueError):
                msg = json.loads(proc.stdout).get("Error") or msg
            raise BinariesError(
                f"the module proxy does not serve {module}@{version}:\n    {msg}"
            )
    return path.read_text()


def _escape_path(module: str) -> str:
    # Go module cache case-encoding: upper-case letters become "!" + lower-case.
    return re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), module)


def _directives(gomod: str, keyword: str) -> list[str]:
    """Return the bodies of all ``keyword`` directives (single-line and block form)."""
    out: list[str] = []
    block: str | None = None  # keyword of the block we are inside, if any
    for raw in gomod.splitlines():
        line = raw.split("//", 1)[0].strip()
        if block is not None:
            if line == ")":
                block = None
            elif line and block == keyword:
                out.append(line)
        elif line.endswith("(") and len(line.split()) == 2:
            block = line.split()[0]
        elif line.startswith(keyword + " "):
            out.append(line[len(keyword) + 1:].strip())
    return out


def _go_line(gomod: str) -> str:
    lines = _directives(gomod, "go")
    return lines[0] if lines else "1.22"


def _staging_modules(gomod: str) -> list[str]:
    mods = []
    for body in _directives(gomod, "replace"):
        left, _, right = body.partition("=>")
        if right.strip().startswith("./staging/"):
            mods.append(left.split()[0])
    return sorted(mods)


def _write_if_changed(path: pathlib.Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)  # an existing go.sum is kept; `go mod tidy` reconciles it


# --------------------------------------------------------------------------- builders


def _binary_name(pkg: str) -> str:
    """Name ``go build -o dir/`` gives a main package (a trailing /vN element is skipped)."""
    parts = pkg.split("/")
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        return parts[-2]
    return parts[-1]


def _build_into_cache(
    *,
    kind: str,
    version: str,
    src: pathlib.Path,
    packages: dict[str, str],
    ldflags: str,
    toolchain: str,
    verbose: bool,
    cold_hint: str,
) -> dict[str, pathlib.Path]:
    final = _bin_dir(kind, version)
    (cache_root() / "bin").mkdir(parents=True, exist_ok=True)
    n = len(packages)
    _log(verbose, f"building {n} command{'s' * (n != 1)} ({', '.join(packages)}) "
         f"for {kind} {version} (this takes {cold_hint} cold, seconds when GOCACHE is warm)…")
    with tempfile.TemporaryDirectory(prefix=f".tmp-{kind}-", dir=cache_root() / "bin") as tmp:
        if len(packages) == 1:
            # Explicit file name: a module root like go.etcd.io/etcd/server/v3 would
            # otherwise be written as "server".
            (name, pkg), = packages.items()
            out, built = os.path.join(tmp, name), {name: pathlib.Path(tmp) / name}
        else:
            out = tmp + os.sep
            built = {name: pathlib.Path(tmp) / _binary_name(pkg) for name, pkg in packages.items()}
        args = ["build", "-trimpath", "-ldflags", ldflags, "-o", out]
        _run_go([*args, *packages.values()], cwd=src, what=f"building {kind} {version}",
                verbose=verbose, toolchain=toolchain)
        for name, path in built.items():
            if not path.is_file():
                raise BinariesError(f"go build succeeded but {path} was not produced")
        final.mkdir(parents=True, exist_ok=True)
        result = {}
        for name, path in built.items():
            dest = final / name
            os.replace(path, dest)  # atomic, same filesystem
            result[name] = dest
    return result


def _ensure_etcd(version: str, verbose: bool) -> pathlib.Path:
    final = _bin_dir("etcd", version) / "etcd"
    if final.is_file():
        return final
    upstream = _download_gomod(ETCD_MODULE, version, verbose)
    go_line = _go_line(upstream)
    toolchain = _toolchain_for(go_line, verbose)
    src = cache_root() / "src" / f"etcd-{version}"
    src.mkdir(parents=True, exist_ok=True)
    _write_if_changed(
        src / "go.mod",
        "// Generated by slipway_dev.binaries: wrapper module to build etcd.\n"
        "module slipway.local/etcd\n\n"
        f"go {go_line}\n\n"
        f"require {ETCD_MODULE} {version}\n\n"
        f"tool {ETCD_MODULE}\n",
    )
    _log(verbose, f"downloading {ETCD_MODULE} {version} module closure…")
    _run_go(["mod", "tidy"], cwd=src, what=f"resolving {ETCD_MODULE} {version}",
            verbose=verbose, toolchain=toolchain)
    ldflags = "-s -w"
    built = _build_into_cache(
        kind="etcd", version=version, src=src, packages={"etcd": ETCD_MODULE},
        ldflags=ldflags, toolchain=toolchain, verbose=verbose, cold_hint="~40 s on 2 cores",
    )
    return built["etcd"]


def _k8s_ldflags(version: str) -> str:
    major, minor = _parse_go_version(version.lstrip("v"))[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _k8s_wrapper_gomod(version: str, verbose: bool) -> tuple[str, str, int]:
    """Return (wrapper go.mod text, go line, number of staging modules replaced)."""
    upstream = _download_gomod(K8S_MODULE, version, verbose)
    go_line = _go_line(upstream)
    godebug = _directives(upstream, "godebug")
    staging = _staging_modules(upstream)
    if not staging:
        raise BinariesError(f"found no ./staging replace directives in {K8S_MODULE}@{version}")
    minor = _parse_go_version(version.lstrip("v"))[1]
    patch = _parse_go_version(version.lstrip("v"))[2]
    pub = f"v0.{minor}.{patch}"
    lines = [
        "// Generated by slipway_dev.binaries: wrapper module to build kubernetes commands.",
        "module slipway.local/kubernetes",
        "",
        f"go {go_line}",
        "",
    ]
    lines += [f"godebug {g}" for g in godebug]
    lines += ["", f"require {K8S_MODULE} {version}", "", "replace ("]
    lines += [f"\t{m} => {m} {pub}" for m in staging]
    lines += [")", "", "tool ("]
    lines += [f"\t{_K8S_PACKAGES[c]}" for c in K8S_COMMANDS]
    lines += [")", ""]
    return "\n".join(lines), go_line, len(staging)


def _ensure_k8s(version: str, commands: Sequence[str], verbose: bool) -> dict[str, pathlib.Path]:
    final = _bin_dir("k8s", version)
    todo = [c for c in commands if not (final / c).is_file()]
    result = {c: final / c for c in commands if c not in todo}
    if not todo:
        return result
    text, go_line, n_staging = _k8s_wrapper_gomod(version, verbose)
    toolchain = _toolchain_for(go_line, verbose)
    src = cache_root() / "src" / f"k8s-{version}"
    src.mkdir(parents=True, exist_ok=True)
    _write_if_changed(src / "go.mod", text)
    _log(verbose, f"downloading {K8S_MODULE} {version} module closure "
         f"({n_staging} staging modules pinned to published tags)…")
    _run_go(["mod", "tidy"], cwd=src, what=f"resolving {K8S_MODULE} {version}",
            verbose=verbose, toolchain=toolchain)
    result.update(_build_into_cache(
        kind="k8s", version=version, src=src,
        packages={c: _K8S_PACKAGES[c] for c in todo},
        ldflags=_k8s_ldflags(version), toolchain=toolchain, verbose=verbose,
        cold_hint="~5-11 min on 2 cores",
    ))
    return result


def _candidates(primary: str, env_var: str, fallbacks: Sequence[str]) -> list[str]:
    """Versions to try: only the pinned one if set via env, else primary then fallbacks."""
    return [primary] if os.environ.get(env_var) else [primary, *fallbacks]


def _cached(kind: str, versions: Sequence[str], names: Sequence[str]) -> dict[str, pathlib.Path]:
    """Binaries of the first candidate version whose cache dir holds all ``names``."""
    for v in versions:
        d = _bin_dir(kind, v)
        if all((d / n).is_file() for n in names):
            return {n: d / n for n in names}
    return {}


def _with_fallbacks(
    versions: Sequence[str], label: str, verbose: bool, fn: Callable[[str], _T]
) -> _T:
    """Return ``fn(version)`` for the first candidate version that succeeds."""
    errors: list[str] = []
    for v in versions:
        try:
            return fn(v)
        except BinariesError as exc:
            errors.append(f"{label} {v}: {exc}")
            if v != versions[-1]:
                _log(verbose, f"{label} {v} failed ({str(exc).splitlines()[0]}); "
                     "trying next version")
    raise BinariesError("\n".join(errors))


# --------------------------------------------------------------------------- kstatus

# kstatus, the library Flux and kpt read an object's health with: a small Go program on it
# (tests/tools/kstatus), built like the binaries above and cached by the library's version and
# the program's own source.
CLI_UTILS_VERSION = "v0.37.2"
KSTATUS_SOURCE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "tools" / "kstatus"


def ensure_kstatus(*, verbose: bool = True) -> pathlib.Path:
    """The kstatus evaluator's path, built once per source from the Go module proxy."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((KSTATUS_SOURCE / name).read_bytes())
    version = f"{CLI_UTILS_VERSION}-{digest.hexdigest()[:12]}"
    toolchain = _toolchain_for(_go_line((KSTATUS_SOURCE / "go.mod").read_text()), verbose)
    return _tool_once(_bin_dir("kstatus", version) / "kstatus", verbose, lambda: _build_into_cache(
        kind="kstatus", version=version, src=KSTATUS_SOURCE,
        packages={"kstatus": "."}, ldflags="-s -w", toolchain=toolchain, verbose=verbose,
        cold_hint="~1 min on 2 cores",
    )["kstatus"])


def _tool_once(final: pathlib.Path, verbose: bool,
               build: Callable[[], pathlib.Path]) -> pathlib.Path:
    """``final`` when cached, else ``build()`` under the build lock (once across processes)."""
    if final.is_file():
        return final
    with _lock(verbose):
        return final if final.is_file() else build()


# --------------------------------------------------------------------------- helm

HELM_VERSION: str = os.environ.get("SLIPWAY_HELM_VERSION", "v4.3.2")
HELM_MODULE = "helm.sh/helm/v4"


def ensure_helm(*, verbose: bool = True) -> pathlib.Path:
    """helm, built once from the Go module proxy (a wrapper module that requires it and names
    its command as a tool) and cached by version: the chart's tests lint, render and install
    with it."""
    return _tool_once(_bin_dir("helm", HELM_VERSION) / "helm", verbose,
                      lambda: _build_helm(verbose))


def _build_helm(verbose: bool) -> pathlib.Path:
    go_line = _go_line(_download_gomod(HELM_MODULE, HELM_VERSION, verbose))
    toolchain = _toolchain_for(go_line, verbose)
    src = cache_root() / "src" / f"helm-{HELM_VERSION}"
    src.mkdir(parents=True, exist_ok=True)
    _write_if_changed(src / "go.mod", "\n".join([
        "// Generated by slipway_dev.binaries: wrapper module to build helm.",
        "module slipway.local/helm", "", f"go {go_line}", "",
        f"require {HELM_MODULE} {HELM_VERSION}", "", f"tool {HELM_MODULE}/cmd/helm", ""]))
    _run_go(["mod", "tidy"], cwd=src, what=f"resolving {HELM_MODULE} {HELM_VERSION}",
            verbose=verbose, toolchain=toolchain)
    return _build_into_cache(
        kind="helm", version=HELM_VERSION, src=src,
        packages={"helm": f"{HELM_MODULE}/cmd/helm"},
        ldflags=f"-s -w -X {HELM_MODULE}/internal/version.version={HELM_VERSION}",
        toolchain=toolchain, verbose=verbose, cold_hint="~2 min on 2 cores",
    )["helm"]


# --------------------------------------------------------------------------- public API


def _from_kubebuilder_assets(verbose: bool) -> dict[str, pathlib.Path]:
    folder = os.environ.get("KUBEBUILDER_ASSETS")
    if not folder:
        return {}
    found = {}
    for name in ALL_BINARIES:
        p = pathlib.Path(folder) / name
        if p.is_file() and os.access(p, os.X_OK):
            found[name] = p
    if found:
        _log(verbose, f"using {', '.join(sorted(found))} from KUBEBUILDER_ASSETS={folder}")
    else:
        _log(verbose, f"KUBEBUILDER_ASSETS={folder} holds none of the binaries; building")
    return found


def ensure_binaries(*, verbose: bool = True) -> dict[str, pathlib.Path]:
    """Return paths of etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl.

    Binaries come from ``KUBEBUILDER_ASSETS`` when present there, else from the version-keyed
    cache, else they are built (once) from the Go module proxy.  Raises BinariesError.
    """
    start = time.monotonic()
    result = _from_kubebuilder_assets(verbose)
    missing_k8s = [c for c in K8S_COMMANDS if c not in result]
    need_etcd = "etcd" not in result
    etcd_versions = _candidates(ETCD_VERSION, "SLIPWAY_ETCD_VERSION", ETCD_FALLBACK_VERSIONS)
    k8s_versions = _candidates(K8S_VERSION, "SLIPWAY_K8S_VERSION", K8S_FALLBACK_VERSIONS)
    # Fast path, no lock and no network: take what the cache already holds.  A cached
    # fallback version is used as-is (primary is preferred only if it is cached too).
    if need_etcd:
        result.update(_cached("etcd", etcd_versions, ["etcd"]))
    if missing_k8s:
        result.update(_cached("k8s", k8s_versions, missing_k8s))
    built_any = any(name not in result for name in ALL_BINARIES)
    if built_any:
        with _lock(verbose):  # _ensure_* re-check the cache: another process may have built
            if "etcd" not in result:
                result["etcd"] = _with_fallbacks(
                    etcd_versions, "etcd", verbose, lambda v: _ensure_etcd(v, verbose)
                )
            if any(c not in result for c in K8S_COMMANDS):
                result.update(_with_fallbacks(
                    k8s_versions, "kubernetes", verbose,
                    lambda v: _ensure_k8s(v, missing_k8s, verbose),
                ))
    if built_any:
        _log(verbose, f"all binaries ready in {_fmt(time.monotonic() - start)} total")
    return {name: result[name] for name in ALL_BINARIES}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slipway_dev.binaries",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        paths = ensure_binaries(verbose=not args.quiet)
    except BinariesError as exc:
        print(f"{_PREFIX} ERROR: {exc}", file=sys.stderr)
        return 1
    for name, path in paths.items():
        print(f"{name}={path}")
    _log(not args.quiet, f"total {_fmt(time.monotonic() - start)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
