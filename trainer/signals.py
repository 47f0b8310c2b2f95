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
            log.warning("%s received: stopping after the current step with an emergency checkpoint", name)
        else:
            log.warning("%s received again: already stopping", name)
