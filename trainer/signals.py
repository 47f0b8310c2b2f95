"""SIGTERM/SIGINT become a request to stop at the next safe point (the end of the current
optimizer step), where the loop writes an emergency checkpoint and exits with EXIT_INTERRUPTED."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

log = logging.getLogger("trainer")


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.received_at: float | None = None
        #: Optimizer steps completed so far; the loop keeps it current so the log can say what is lost.
        self.steps_done = 0
        self.steps_done_at_signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name, self.received_at = name, time.monotonic()
            self.steps_done_at_signal = self.steps_done
            log.warning("%s received after step %d: finishing the step in progress, then an emergency checkpoint",
                        name, self.steps_done)
        else:
            log.warning("%s received again: already stopping", name)


def die_with_launcher() -> None:
    """Under torchrun, end this rank when torchrun itself dies (Linux). torchrun starts each rank in a
    session of its own, so a SIGKILL to torchrun, or to the process group of whoever started it,
    would leave the ranks training on unsupervised, writing into a run that is being relaunched."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != launcher or launcher == 1:  # torchrun was gone before the line above took effect
        log.error("torchrun, which started this rank, is gone: exiting")
        os._exit(128 + int(signal.SIGKILL))
