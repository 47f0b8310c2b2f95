"""One local attempt: ``python -m runner.backends.local_attempt --attempt-dir DIR -- TRAINER COMMAND``.

A thin parent for the trainer, started by the local backend in a session of its own so that it
outlives the runner. It exists for three reasons:

- it records the trainer's exit (code or signal) in ``DIR/exit.json``, so a runner that was
  restarted, and is therefore not the trainer's parent, still learns how the attempt ended;
- it forwards SIGTERM/SIGINT to the trainer (an emergency checkpoint, then exit 75);
- on Linux the trainer is killed when this process dies, so a lost attempt never leaves an
  unsupervised trainer writing to the run;
- it holds the attempt's lock (inherited from the launcher) for its whole life, so launching the
  same attempt again finds it instead of starting a second trainer.

Standard library only: it must start fast and never import torch."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner import proc

WRAPPER_RECORD = "wrapper.json"
TRAINER_RECORD = "trainer.json"
EXIT_RECORD = "exit.json"


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _die_with_parent(parent: int):
    """preexec_fn for the trainer: the kernel sends it SIGKILL when this wrapper dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def set_death_signal() -> None:
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the wrapper died before the line above took effect
            os._exit(128 + int(signal.SIGKILL))

    return set_death_signal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.backends.local_attempt")
    parser.add_argument("--attempt-dir", required=True, type=Path)
    # The attempt's lock, inherited from the launcher: held (open) for as long as this process lives.
    parser.add_argument("--lock-fd", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no trainer command after --")

    me = os.getpid()
    write_json(args.attempt_dir / WRAPPER_RECORD, {"pid": me, "ident": proc.identity(me)})
    child: subprocess.Popen | None = None
    pending: list[int] = []

    def forward(signum, _frame) -> None:
        if child is None:
            pending.append(signum)
        elif child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    # close_fds (the default) keeps the lock out of the trainer: it is released when this process ends.
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent(me))
    write_json(args.attempt_dir / TRAINER_RECORD, {"pid": child.pid, "ident": proc.identity(child.pid)})
    for signum in pending:
        child.send_signal(signum)
    code = child.wait()
    record = {"exit_code": code if code >= 0 else None,
              "signal": signal.Signals(-code).name if code < 0 else None,
              "ended": time.time()}
    write_json(args.attempt_dir / EXIT_RECORD, record)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
