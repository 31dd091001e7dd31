"""Misbehaving wrappers around a model command, for process-hygiene tests.

    python children.py long-line BYTES -- CMD...      print one BYTES-long line, then exec CMD
    python children.py setsid-child PIDFILE -- CMD...  run CMD in a new session (setsid) as a
                                                       grandchild, write its pid, wait for it
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    mode, arg, sep, *cmd = sys.argv[1:]
    assert sep == "--" and cmd, __doc__
    if mode == "long-line":
        sys.stdout.write("x" * int(arg) + "\n")
        sys.stdout.flush()
        os.execvp(cmd[0], cmd)
    elif mode == "setsid-child":
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.execvp(cmd[0], cmd)
        tmp = arg + ".tmp"
        with open(tmp, "w") as out:
            out.write(str(pid))
        os.replace(tmp, arg)
        os.waitpid(pid, 0)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
