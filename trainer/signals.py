"""SIGTERM/SIGINT become a request to stop at the next safe point (the end of the current
optimizer step), where the loop writes an emergency checkpoint and exits with EXIT_INTERRUPTED."""

from __future__ import annotations

import logging
import signal
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
