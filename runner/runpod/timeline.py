"""When a pod was running, from the pod's own timeline: what GPU-hours are counted from.

RunPod's billing (``GET /v2/billing/pods``) gives dollars per time *bucket* (an hour, a day, …): the
bucket's edges say nothing of when the pod ran, so hours cannot be read from it. The pod itself can
tell: ``startedAt`` (when it went RUNNING, RunPod's clock), its status at each look, and for a pod
that exited, GraphQL's ``lastStatusChange`` ("Exited by Runpod: Fri Jun 19 2026 03:36:49 GMT+0000",
to the second: the reason and a JavaScript date, as third-party RunPod clients record it; RunPod
documents neither, so a reason without a date is read as no time at all). The runner keeps what it saw of each pod in a small file in its state folder,
so a runner that restarts still knows, and a pod that is terminated (and so gone from the API)
can still be accounted for.

The end of a running interval is known exactly when the runner terminated the pod itself; when
the pod exited on its own (a preemption, the trainer stopping its own pod) it lies between the
last look that saw it RUNNING and the first that did not, narrowed by ``lastStatusChange``'s second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from runner import paths
from runner.runpod.client import ALIVE, RUNNING, Pod

_FOLDER = "runpod-pods"


@dataclass
class PodTimeline:
    pod_id: str
    #: [start, end] of each time the pod was RUNNING (end None while it runs)
    intervals: list[list[float | None]] = field(default_factory=list)
    last_running_seen: float | None = None
    last_booting_seen: float | None = None  # the last look that found it PROVISIONING or STARTING
    cost_per_hour: float | None = None  # the pod's `cost` while RUNNING: $/h for the whole pod
    start_window: list[float] | None = None  # [earliest, latest] the open interval can have started

    # --- what the runner saw -----------------------------------------------------------------------
    def saw(self, pod: Pod, seen_at: float) -> None:
        """A look at a pod that is still alive (``GET /v2/pods/{id}`` at ``seen_at``), kept on disk."""
        if pod.status == RUNNING:
            self.running(pod.started_at, seen_at, pod.cost_per_hour, pod.uptime_seconds)
        elif pod.status in ALIVE:
            self.booting(seen_at)
        else:
            return
        self.save()

    def booting(self, seen_at: float) -> None:
        """A look that found the pod PROVISIONING or STARTING (not billed as running yet)."""
        if self._open() is None:
            self.last_booting_seen = seen_at

    def running(self, started_at: float | None, seen_at: float, cost_per_hour: float | None,
                uptime: float | None = None) -> None:
        """A look that found the pod RUNNING since ``started_at`` (RunPod's ``startedAt``), its container
        up for ``uptime`` whole seconds (``runtime.uptime``)."""
        current = self._open()
        if current is not None and started_at is not None and started_at > float(current[0]) + 1.5:
            current[1] = self.last_running_seen or seen_at  # started again since: a new interval
            current = None
        if current is None:
            self.start_window = self._first_window(started_at, seen_at)
            self.intervals.append([sum(self.start_window) / 2, None])
            current = self.intervals[-1]
        if uptime is not None and self.start_window is not None:
            # Each look narrows when it started: ``uptime`` whole seconds before the answer (which came a
            # moment after ``seen_at``). A look that disagrees saw a restarted container: ignored.
            lo, hi = max(self.start_window[0], seen_at - float(uptime) - 1.0), \
                min(self.start_window[1], seen_at - float(uptime) + 0.05)
            if lo <= hi:
                self.start_window = [lo, hi]
                current[0] = (lo + hi) / 2
        self.last_running_seen = seen_at
        if cost_per_hour:
            self.cost_per_hour = cost_per_hour

    def _first_window(self, started_at: float | None, seen_at: float) -> list[float]:
        """Where the start can lie: in ``startedAt``'s second (RunPod gives whole seconds, as in its
        published examples), after the last look that saw the pod booting, before this look."""
        lo = started_at if started_at is not None else (self.last_booting_seen or seen_at)
        hi = lo + 1.0 if started_at is not None and started_at == int(started_at) else lo
        if started_at is None:
            hi = seen_at
        if self.last_booting_seen is not None and lo <= self.last_booting_seen <= hi:
            lo = self.last_booting_seen
        return [lo, max(lo, min(hi, seen_at))]

    def stopped(self, seen_at: float, changed_at: float | None = None) -> None:
        """A look that found the pod no longer running (EXITED, ERROR, TERMINATED or gone);
        ``changed_at`` is when RunPod says its status last changed, to the second."""
        current = self._open()
        if current is None:
            return
        lo = max(float(current[0]), self.last_running_seen or float(current[0]))
        hi = seen_at
        if changed_at is not None and lo - 1.0 <= changed_at <= hi:
            lo, hi = max(lo, changed_at), min(hi, changed_at + 1.0)  # the second it happened in
        current[1] = (lo + hi) / 2 if hi >= lo else lo

    def terminated(self, at: float) -> None:
        """The runner terminated (or stopped) the pod at ``at``: the interval ends then, exactly."""
        current = self._open()
        if current is not None:
            current[1] = max(float(current[0]), at)

    # --- what it adds up to -----------------------------------------------------------------------
    def _open(self) -> list[float | None] | None:
        return self.intervals[-1] if self.intervals and self.intervals[-1][1] is None else None

    @property
    def started(self) -> float | None:
        return float(self.intervals[0][0]) if self.intervals else None

    @property
    def ended(self) -> float | None:
        if not self.intervals or self._open() is not None:
            return None
        return float(self.intervals[-1][1])  # type: ignore[arg-type]

    def running_seconds(self, now: float | None = None) -> float:
        total = 0.0
        for start, end in self.intervals:
            stop = end if end is not None else (now if now is not None else self.last_running_seen or start)
            total += max(0.0, float(stop) - float(start))  # type: ignore[arg-type]
        return total

    # --- kept in the state folder -------------------------------------------------------------------
    @staticmethod
    def path(pod_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in pod_id)
        return paths.state_dir() / _FOLDER / f"{safe}.json"

    @classmethod
    def load(cls, pod_id: str) -> PodTimeline:
        try:
            raw = json.loads(cls.path(pod_id).read_text())
            return cls(pod_id=pod_id, intervals=raw.get("intervals", []), last_running_seen=raw.get("last_running_seen"),
                       last_booting_seen=raw.get("last_booting_seen"), cost_per_hour=raw.get("cost_per_hour"),
                       start_window=raw.get("start_window"))
        except (FileNotFoundError, ValueError, TypeError):
            return cls(pod_id=pod_id)

    def save(self) -> None:
        path = self.path(self.pod_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"intervals": self.intervals, "last_running_seen": self.last_running_seen,
                                   "last_booting_seen": self.last_booting_seen, "cost_per_hour": self.cost_per_hour,
                                   "start_window": self.start_window}))
        os.replace(tmp, path)
