"""A container's volume mounts, then its command: run by the node agent as

    unshare --mount --propagation private python -m slipway_dev.mountns \\
        --bind SRC DST [--ro DST] ... -- ARGV...

inside the pod's network namespace. The mounts exist only in this process's own mount
namespace (what a container runtime gives each container); the host, and every other pod, see
nothing of them. A mount point that does not exist is created as an empty folder first (on
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
    options = parser.parse_args(args[:split])
    command = args[split + 1:]
    if not command:
        print("mountns: no command after --", file=sys.stderr)
        return 2
    # Every source is opened before the first mount: a mount on /tmp would otherwise hide a
    # source folder under /tmp (the agent keeps its pods' volumes in its state folder).
    try:
        handles = [os.open(source, os.O_PATH) for source, _ in options.bind]
    except OSError as error:
        print(f"mountns: cannot open a volume: {error}", file=sys.stderr)
        return 128
    for (source, target), handle in zip(options.bind, handles):
        held = f"/proc/{os.getpid()}/fd/{handle}"
        try:
            if os.path.isdir(held):
                os.makedirs(target, exist_ok=True)
            elif not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()  # a file mounted on a file (subPath)
            subprocess.run(["mount", "--bind", held, target], check=True,
                           capture_output=True, text=True)
            if target in options.ro:
                subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True,
                               capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as error:
            said = getattr(error, "stderr", "") or str(error)
            print(f"mountns: cannot mount {source} at {target}: {said.strip()}",
                  file=sys.stderr)
            return 128
    for handle in handles:
        os.close(handle)
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"mountns: cannot run {command[0]}: {error}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
