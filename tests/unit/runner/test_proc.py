from __future__ import annotations

import os
import subprocess
import sys

from runner import proc
from tests.fixtures.jobs import wait_for


def test_identity_tells_a_live_process_from_a_gone_one():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    ident = proc.identity(child.pid)
    assert ident and proc.is_alive(child.pid, ident)
    child.stdin.close()
    child.wait(timeout=30)
    assert proc.identity(child.pid) is None
    assert not proc.is_alive(child.pid, ident)


def test_a_reused_pid_is_not_the_recorded_process():
    pid, ident = proc.me()
    assert proc.is_alive(pid, ident)
    # Same pid, another start time: what a recorded pid looks like after the kernel reused it.
    assert not proc.is_alive(pid, ident + "0")
    assert not proc.is_alive(pid, None)


def test_an_unreaped_child_counts_as_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = proc.identity(child.pid)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, deliberately not reaped yet
    assert proc.identity(child.pid) is None
    assert not proc.is_alive(child.pid, ident)
    child.wait()


def test_find_by_cmdline():
    marker = "find-me-by-this-marker-4711"
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", marker], stdin=subprocess.PIPE)
    try:
        # Right after exec the kernel may show an empty command line for a moment.
        wait_for(lambda: proc.find_by_cmdline(marker) == [child.pid], timeout=10, what="the child's command line")
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert proc.find_by_cmdline(marker) == []
