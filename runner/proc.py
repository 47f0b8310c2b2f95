"""Process identity that survives pid reuse: a pid plus the time the process started.

A restarted runner finds the processes it launched by the pid it recorded; the start time tells
"still the same process" from "a new process that got the same pid"."""

from __future__ import annotations

import os
import subprocess
import sys


def identity(pid: int) -> str | None:
    """A string that names this process for as long as it lives; None if no live process has ``pid``.

    Zombies (exited, not yet reaped) count as gone."""
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            return None
        # The command name (field 2) may hold spaces or parentheses: split after its closing one.
        fields = raw[raw.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            return None
        return f"linux:{fields[19]}"  # field 22: start time in clock ticks since boot
    try:  # macOS and other Unixes: ps knows the start time
        out = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return "ps:" + line.split(None, 1)[1]


def is_alive(pid: int | None, ident: str | None) -> bool:
    """True when ``pid`` is still the process that had ``ident`` when it was recorded."""
    return bool(pid) and ident is not None and identity(pid) == ident


def me() -> tuple[int, str]:
    pid = os.getpid()
    return pid, identity(pid) or ""


def find_by_cmdline(needle: str) -> list[int]:
    """Pids of live processes whose command line contains ``needle`` (Linux; empty elsewhere)."""
    if not sys.platform.startswith("linux"):
        return []
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if needle in cmdline and identity(int(name)):
            found.append(int(name))
    return found
