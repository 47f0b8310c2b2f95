"""``status.json`` heartbeat and the periodic copy of TensorBoard events and the trainer log to the
run URI, on one background thread. The runner reads the heartbeat to tell a live run from a lost one."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import replace

from trainer import contract
from trainer.storage import Storage, StorageError

log = logging.getLogger("trainer")


class Reporter:
    def __init__(self, storage: Storage, heartbeat_s: float, sync_s: float, status: contract.Status):
        self.storage, self.heartbeat_s, self.sync_s = storage, heartbeat_s, sync_s
        # attempt: the runner's attempt id (contract.ENV_ATTEMPT_ID), so it can tell this attempt's status from an older one.
        self.status = replace(status, host=status.host or socket.gethostname(), pid=os.getpid(),
                              attempt=os.environ.get(contract.ENV_ATTEMPT_ID, "") or status.attempt)
        self._lock = threading.Lock()
        # One status write at a time, and none after the final one: a heartbeat that is slow to reach
        # remote storage (retrying a throttled PUT) must not land after `done` and overwrite it.
        self._write_lock = threading.Lock()
        self._final_written = False
        self._stop = threading.Event()
        self._last_sync = 0.0
        self._thread: threading.Thread | None = None
        #: A refusal no retry can fix (keys revoked, bucket deleted): the loop stops on it.
        self.permanent_error: StorageError | None = None

    def start(self) -> None:
        self.write()
        self._thread = threading.Thread(target=self._run, name="status-heartbeat", daemon=True)
        self._thread.start()

    def update(self, **fields) -> None:
        with self._lock:
            self.status = replace(self.status, **fields)

    def write(self, *, final: bool = False) -> None:
        with self._write_lock:
            if self._final_written and not final:
                return
            with self._lock:
                self.status = replace(self.status, heartbeat=time.time())
                data = self.status.to_json()
            self._final_written = self._final_written or final
            self.storage.put_bytes(contract.STATUS, data)

    def sync_files(self) -> None:
        work = self.storage.work_dir
        for sub in (contract.TENSORBOARD_DIR, contract.LOGS_DIR):
            if (work / sub).is_dir():
                self.storage.sync_dir(work / sub, sub)
        self._last_sync = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.write()
                if time.monotonic() - self._last_sync >= self.sync_s:
                    self.sync_files()
            except StorageError as e:
                # No later heartbeat can succeed either; the loop sees this and stops the run.
                if self.permanent_error is None:
                    log.error("status heartbeat refused: %s", e)
                self.permanent_error = e
            except Exception as e:  # a missed heartbeat is not worth killing the run for
                log.warning("status heartbeat failed: %s", e)

    def finish(self, state: str, **fields) -> None:
        """Stop the heartbeat, sync files and write the final state (``done`` is written last)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 30)
        self.update(state=state, **fields)
        try:
            self.sync_files()
        except Exception as e:
            log.warning("could not sync logs and TensorBoard events: %s", e)
        self.write(final=True)
