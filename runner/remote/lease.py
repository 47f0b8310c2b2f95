"""One supervisor acts on a job at a time: a lease object beside the job's snapshot, taken and renewed
only by conditional writes.

- Taking: a lease that does not exist is created with "only if absent"; one that its holder gave back,
  or that nobody renewed for a whole term *as this process measures it*, is replaced with "only if
  still at the version I read". Two takers race on that write; one wins.
- Holding: the holder rewrites it ("only if still mine") every third of the term. It counts itself
  the holder only until ``LEASE_USE`` of a term has passed since the last renewal it *sent* that
  succeeded, which is before any other process may count the term as run out: that one starts its
  clock when it first reads the version, after the write. No clock is compared between machines.
- A holder that finds the lease taken (a version it did not write) lets the job go at once.

A process that dies keeps its lease until the term runs out: the next supervisor waits that long
(a minute by default; ``RUNNER_SUPERVISOR_LEASE_SECONDS``) and then takes the job over from its snapshot."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass

from runner.remote import lease_seconds
from runner.remote.store import Store, StoreError, VersionConflict

#: The share of a term after the last successful renewal during which the holder still acts.
LEASE_USE = 0.6


@dataclass
class Held:
    version: str
    generation: int
    renewed: float  # monotonic time the successful renewal was sent


class Leases:
    """The leases of one supervisor process (``holder``), one per job, each at ``jobs/<job>/lease.json``."""

    def __init__(self, store: Store, holder: str, place: str = "", term: float | None = None):
        self.store = store
        self.holder = holder
        self.place = place
        self.term = term if term is not None else lease_seconds()
        self._held: dict[str, Held] = {}
        self._seen: dict[str, tuple[str, float]] = {}  # job: (version of someone else's lease, first seen)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def key(job_id: str) -> str:
        return f"jobs/{job_id}/lease.json"

    def _document(self, generation: int, released: bool = False) -> bytes:
        return json.dumps({"holder": self.holder, "place": self.place, "generation": generation, "term": self.term,
                           "written": time.time(), "released": released}).encode()

    def read(self, job_id: str) -> dict | None:
        """The lease as written (holder, place, written, released), or None when there is none."""
        got = self.store.get(self.key(job_id))
        return json.loads(got[0]) if got else None

    # --- taking and holding -------------------------------------------------------------------------
    def take(self, job_id: str) -> bool:
        """Hold the job's lease: True when this process holds it now."""
        with self._lock:
            if self.holds(job_id):
                return True
            key = self.key(job_id)
            sent = time.monotonic()
            try:
                got = self.store.get(key)
                if got is None:
                    version = self.store.put(key, self._document(1), if_absent=True)
                    self._held[job_id] = Held(version, 1, sent)
                    return True
                data, version = got
                doc = json.loads(data)
                generation = int(doc.get("generation") or 0) + 1
                if not doc.get("released") and doc.get("holder") != self.holder:
                    seen = self._seen.get(job_id)
                    if seen is None or seen[0] != version:
                        self._seen[job_id] = (version, time.monotonic())
                        return False
                    if time.monotonic() - seen[1] < float(doc.get("term") or self.term):
                        return False
                sent = time.monotonic()
                new = self.store.put(key, self._document(generation), if_version=version)
            except (VersionConflict, StoreError, ValueError):
                return False
            self._held[job_id] = Held(new, generation, sent)
            self._seen.pop(job_id, None)
            return True

    def holds(self, job_id: str) -> bool:
        """True while this process may act on the job (well within the term of its last renewal)."""
        held = self._held.get(job_id)
        return held is not None and time.monotonic() - held.renewed < LEASE_USE * self.term

    def renew(self, job_id: str) -> bool:
        """Write the lease again; False (and the job let go) when someone else took it."""
        with self._lock:
            held = self._held.get(job_id)
            if held is None:
                return False
            sent = time.monotonic()
            try:
                version = self.store.put(self.key(job_id), self._document(held.generation + 1), if_version=held.version)
            except VersionConflict:
                self._held.pop(job_id, None)
                return False
            except StoreError:
                return self.holds(job_id)  # the store not answering: it holds until its term runs out
            self._held[job_id] = Held(version, held.generation + 1, sent)
            return True

    def release(self, job_id: str) -> None:
        """Give the lease back, so that another supervisor may take the job at once."""
        with self._lock:
            held = self._held.pop(job_id, None)
            if held is None:
                return
            with contextlib.suppress(VersionConflict, StoreError):
                self.store.put(self.key(job_id), self._document(held.generation + 1, released=True),
                               if_version=held.version)

    def forget(self, job_id: str) -> None:
        """Stop counting this process the holder, writing nothing (it learnt that another one acts)."""
        with self._lock:
            self._held.pop(job_id, None)

    def held(self) -> list[str]:
        return list(self._held)

    # --- renewing in the background -------------------------------------------------------------------
    def start(self, alive: callable = lambda: True) -> None:  # type: ignore[valid-type]
        """Renew every held lease each third of the term, while ``alive()`` says the supervisor's loop is
        still going round (a loop stuck for good must not keep its jobs)."""
        def renew_all() -> None:
            while not self._stop.wait(self.term / 3):
                if not alive():
                    continue
                for job_id in self.held():
                    self.renew(job_id)

        self._thread = threading.Thread(target=renew_all, daemon=True, name="lease-renewal")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
