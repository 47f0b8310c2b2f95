"""What an attempt's pod is doing, in the backend interface's terms (:class:`Observation`).

RunPod shows a pod's status, not its trainer's exit code, and restarts a container whose main
process ended, so the pod alone cannot tell a finished job from a crash. The run's ``status.json``
(written by the trainer, tagged with the attempt id) can:

- pod RUNNING, status.json of this attempt ``done``: the trainer finished (its pod keeps running
  until it stops itself): exited 0;
- pod RUNNING, this attempt ``failed`` with a code a rerun cannot fix: exited with that code (the
  container would only be restarted into the same failure);
- pod EXITED and RunPod says "Exited by Runpod": a spot interruption: vanished (the supervisor
  relaunches, unless status.json says done);
- pod EXITED otherwise (the trainer stopped its own pod, or someone stopped it): exited with the
  code status.json implies; vanished when status.json says nothing of this attempt;
- pod gone (404 or TERMINATED): vanished;
- pod never RUNNING within :data:`START_TIMEOUT_SECONDS`: vanished (a machine that never came up)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from runner.backends.base import Observation
from runner.runpod.client import ALIVE, ERROR, EXITED, RUNNING, TERMINATED, RunPodClient
from runner.runpod.timeline import PodTimeline
from trainer import contract

#: A pod that has not reached RUNNING after this long is given up (image pulls can be slow).
START_TIMEOUT_SECONDS = float(os.environ.get("RUNNER_RUNPOD_START_TIMEOUT", "1200"))

StatusReader = Callable[[], "contract.Status | None"]


def observe(client: RunPodClient, handle: dict[str, Any], read_status: StatusReader,
            timeline: PodTimeline | None = None) -> Observation:
    """What the attempt's pod is doing; each look is also noted in the pod's ``timeline``."""
    pod_id = handle["pod_id"]
    seen_at = time.time()
    pod = client.get_pod(pod_id)
    if pod is None or pod.status == TERMINATED:
        _note(timeline, lambda t: t.stopped(seen_at))
        return Observation("vanished", detail=f"pod {pod_id} is gone (terminated by RunPod or outside the runner)")
    if timeline is not None:
        timeline.saw(pod, seen_at)
    status = _mine(read_status(), handle)
    if pod.status in ALIVE:
        if status is not None and status.state == contract.DONE:
            return Observation("exited", contract.EXIT_DONE, detail=f"the trainer is done; pod {pod_id} still runs")
        if status is not None and status.state == contract.FAILED and status.exit_code in contract.EXIT_PERMANENT:
            return Observation("exited", status.exit_code, detail=f"the trainer failed for good in pod {pod_id}")
        if pod.status != RUNNING and time.time() - float(handle.get("created") or time.time()) > START_TIMEOUT_SECONDS:
            return Observation("vanished", detail=f"pod {pod_id} did not start within {START_TIMEOUT_SECONDS:.0f}s "
                                                  f"(still {pod.status})")
        return Observation("running")
    if pod.status == ERROR:
        _note(timeline, lambda t: t.stopped(seen_at))
        return Observation("exited", contract.EXIT_FAILED, detail=f"RunPod reports pod {pod_id} in ERROR (often an "
                                                                  f"image that cannot be pulled)")
    details = client.pod_details(pod_id) if pod.status == EXITED else None
    _note(timeline, lambda t: t.stopped(seen_at, details.changed_at if details else None))
    if details is not None and details.interrupted_by_runpod:
        return Observation("vanished", detail=f"RunPod interrupted pod {pod_id} ({details.last_status_change})")
    why = details.last_status_change if details and details.last_status_change else pod.status
    if status is not None and status.state == contract.DONE:
        return Observation("exited", contract.EXIT_DONE, detail=f"done; pod {pod_id} stopped ({why})")
    if status is not None and status.state == contract.FAILED:
        code = status.exit_code or contract.EXIT_FAILED
        return Observation("exited", code, detail=f"pod {pod_id} stopped ({why}) after exit code {code}")
    if status is not None and status.state == contract.INTERRUPTED:
        return Observation("exited", contract.EXIT_INTERRUPTED, detail=f"pod {pod_id} stopped ({why})")
    return Observation("vanished", detail=f"pod {pod_id} stopped ({why}) without a word from its trainer")


def _note(timeline: PodTimeline | None, change: Callable[[PodTimeline], None]) -> None:
    if timeline is not None:
        change(timeline)
        timeline.save()


def _mine(status: contract.Status | None, handle: dict[str, Any]) -> contract.Status | None:
    """status.json, when this attempt wrote it (an earlier attempt's says nothing of this one)."""
    if status is None or status.attempt != handle.get("attempt_id"):
        return None
    return status
