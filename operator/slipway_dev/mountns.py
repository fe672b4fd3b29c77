"""A container's volume mounts, then its command: run by the node agent as

    unshare --mount --propagation private python -m slipway_dev.mountns \\
        --bind SRC DST [--ro DST] ... -- ARGV...

inside the pod's network namespace. The mounts exist only in this process's own mount
namespace (what a container runtime gives each container); the host, and every other pod, see
nothing of them. With ``--dev``, /dev is the container's own first, as a runtime makes it: a
small tmpfs holding the host's null, zero, full, random, urandom and tty, a private /dev/shm and
the usual /proc/self/fd links; the termination-message file is bound into it
(``/dev/termination-log``) without ever touching the host's /dev. A mount point that does not exist is created as an empty folder first (on
the host's file system, as a runtime creates it in the image's root). Then ARGV replaces this
process (same pid: the agent's signals and exit code are the container's).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("mountns: usage: --bind SRC DST [--ro DST] ... -- ARGV", file=sys.stderr)
        return 2
    split = args.index("--")
    parser = argparse.ArgumentParser(prog="slipway_dev.mountns")
    parser.add_argument("--bind", nargs=2, action="append", default=[], metavar=("SRC", "DST"))
    parser.add_argument("--ro", action="append", default=[], metavar="DST")
    parser.add_argument("--dev", action="store_true", help="a /dev of the container's own")
    parser.add_argument("--keep", action="append", default=[], metavar="PATH",
                        help="a host folder (the interpreter, the checkout) kept visible "
                        "where a mount would cover it")
    options = parser.parse_args(args[:split])
    command = args[split + 1:]
    if not command:
        print("mountns: no command after --", file=sys.stderr)
        return 2
    # Every source is opened before the first mount: a mount on /tmp would otherwise hide a
    # source folder under /tmp (the agent keeps its pods' volumes in its state folder).
    try:
        handles = [os.open(source, os.O_PATH) for source, _ in options.bind]
        kept = [(path, os.open(path, os.O_PATH)) for path in options.keep]
    except OSError as error:
        print(f"mountns: cannot open a volume: {error}", file=sys.stderr)
        return 128
    if options.dev:
        problem = private_dev()
        if problem:
            print(f"mountns: cannot make /dev: {problem}", file=sys.stderr)
            return 128
    for (source, target), handle in zip(options.bind, handles):
        held = f"/proc/{os.getpid()}/fd/{handle}"
        try:
            if os.path.isdir(held):
                os.makedirs(target, exist_ok=True)
            elif not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()  # a file mounted on a file (subPath)
            subprocess.run(["mount", "--no-canonicalize", "--bind", held, target], check=True,
                           capture_output=True, text=True)
            if target in options.ro:
                subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True,
                               capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as error:
            said = getattr(error, "stderr", "") or str(error)
            print(f"mountns: cannot mount {source} at {target}: {said.strip()}",
                  file=sys.stderr)
            return 128
    # A folder the machine's own "image" lives in, covered by a volume (an emptyDir on /tmp,
    # with the checkout under /tmp): bound back at its own path, inside the volume.
    for path, handle in kept:
        covered = any(path == t.rstrip("/") or path.startswith(t.rstrip("/") + "/")
                      for _, t in options.bind)
        if not covered:
            continue
        try:
            os.makedirs(path, exist_ok=True)
            _mount(["--bind", f"/proc/{os.getpid()}/fd/{handle}", path])
        except (OSError, subprocess.CalledProcessError) as error:
            said = getattr(error, "stderr", "") or str(error)
            print(f"mountns: cannot keep {path} visible: {said.strip()}", file=sys.stderr)
            return 128
    for handle in [*handles, *(h for _, h in kept)]:
        os.close(handle)
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"mountns: cannot run {command[0]}: {error}", file=sys.stderr)
        return 127


DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
         "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


def _mount(args: list[str]) -> None:
    # --no-canonicalize: a source held open as /proc/PID/fd/N is that very file, not whatever
    # its old path names now (a mount on /dev or /tmp covers the path, not the file)
    subprocess.run(["mount", "--no-canonicalize", *args], check=True, capture_output=True,
                   text=True)


def private_dev() -> str | None:
    """A /dev of this mount namespace's own: None, or what failed."""
    try:
        held = {name: os.open(f"/dev/{name}", os.O_PATH) for name in DEVICES
                if os.path.exists(f"/dev/{name}")}
        _mount(["-t", "tmpfs", "-o", "mode=755,nosuid,size=65536k", "tmpfs", "/dev"])
        for name, handle in held.items():
            open(f"/dev/{name}", "a").close()
            _mount(["--bind", f"/proc/{os.getpid()}/fd/{handle}", f"/dev/{name}"])
            os.close(handle)
        os.mkdir("/dev/shm", 0o1777)
        _mount(["-t", "tmpfs", "-o", "mode=1777,nosuid,nodev,size=65536k", "shm", "/dev/shm"])
        os.mkdir("/dev/pts", 0o755)
        for name, target in LINKS.items():
            os.symlink(target, f"/dev/{name}")
    except (OSError, subprocess.CalledProcessError) as error:
        return (getattr(error, "stderr", "") or str(error)).strip()
    return None


if __name__ == "__main__":
    sys.exit(main())
