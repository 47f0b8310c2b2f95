"""The runpod backend: each attempt is one RunPod pod, spot or on-demand.

- The pod runs the job's image with its own entrypoint (the trainer's restart loop) and the job
  file's path inside the image plus ``--run-uri`` as arguments: the job file travels in the image,
  exactly as for the docker backend (:mod:`runner.backends.docker_image`: a prebuilt ``image.name``
  as given, or a build pushed to ``image.push_to``).
- The job's ``env`` and ``secrets`` are given to the pod at creation only (RunPod keeps them in the
  pod, nowhere else); RunPod adds ``RUNPOD_POD_ID`` and a pod-scoped ``RUNPOD_API_KEY``, with which
  the trainer's restart loop stops its own pod when its work is over.
- The pod is named ``spot-runner-<owner>-<attempt id>``: launch finds it again by that name, so a
  runner that died after sending the create never makes a second pod, and :mod:`runner.runpod.reconcile`
  terminates pods of ours that no active attempt owns.
- ``stop`` always ends with a terminate: a stopped pod still bills for its disks."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

from runner.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Billed,
    Launched,
    LaunchRequest,
    NoCapacityError,
    Observation,
    SpotUnavailableError,
    drain_lines,
)
from runner.runpod import DEFAULT_BASE_URL, ENV_BASE_URL
from runner.runpod.names import pod_name
from trainer import contract

#: Seconds between two looks at a pod that is being stopped.
STOP_POLL_SECONDS = 1.0
#: Seconds between two looks at a running pod: the supervisor polls often, RunPod rate-limits, and a
#: preemption noticed a few seconds later costs nothing (read at each poll, so tests can lower it).
ENV_POLL_SECONDS = "RUNNER_RUNPOD_POLL_SECONDS"
class RunPodBackend(Backend):
    name = "runpod"

    def __init__(self, client: Any = None):
        from runner.runpod import ENV_API_KEY, configured

        if client is None and not configured():
            raise BackendUnavailable(f"the runpod backend needs a RunPod API key: export {ENV_API_KEY} (RunPod "
                                     f"console → Settings → API Keys) and run the command again")
        self._client = client
        self._storages: dict[str, Any] = {}
        self._looked: dict[str, tuple[float, Observation]] = {}  # pod id: (when, what) of the last look

    @property
    def client(self) -> Any:
        if self._client is None:
            from runner.runpod.client import RunPodClient

            self._client = RunPodClient()
        return self._client

    # --- launch -----------------------------------------------------------------------------------
    def launch(self, request: LaunchRequest, timeout_s: float = 60.0) -> Launched:
        from runner.runpod.errors import NoCapacity, RunPodError, SpotRefused
        from runner.runpod.launch import PodPlan, obtain_pod

        report = request.report or (lambda kind, message: None)
        name = pod_name(request.attempt_id)
        image, job_path = self._image(request)
        try:
            plan = PodPlan(name=name, image=image, args=(job_path, "--run-uri", request.run_uri),
                           env=self._env(request), gpu_count=request.gpu_count,
                           container_disk_gb=request.container_disk_gb, volume_gb=request.volume_gb)
            got = obtain_pod(self.client, plan, request.gpus, spot=request.spot,
                             max_bid_per_gpu=request.max_bid_per_gpu, bid_margin_per_gpu=request.bid_margin_per_gpu,
                             report=report)
        except SpotRefused as e:  # the client's words, in the backend interface's terms
            raise SpotUnavailableError(str(e)) from None
        except NoCapacity as e:
            raise NoCapacityError(str(e), spot=request.spot) from None
        except RunPodError as e:
            raise BackendError(str(e)) from None
        kind = "spot" if got.spot else "on-demand"
        bid = f", bid ${got.bid_per_gpu:.3f}/GPU-h" if got.bid_per_gpu else ""
        handle = {"pod_id": got.pod.id, "pod_name": name, "attempt_id": request.attempt_id, "run_uri": request.run_uri,
                  "gpu": got.gpu, "cloud": got.cloud, "spot": got.spot, "bid_per_gpu": got.bid_per_gpu,
                  "image": image, "created": time.time(),
                  "where": f"RunPod pod {got.pod.id} ({got.gpu} × {request.gpu_count} {kind} on {got.cloud}{bid})"}
        return Launched(handle, got.gpu, got.spot, got.rate_per_hour, got.on_demand_rate_per_hour, adopted=got.adopted)

    def _image(self, request: LaunchRequest) -> tuple[str, str]:
        """The image (in a registry RunPod can pull from) and the job file's path in it, relative to
        the image's working directory, which is where the entrypoint runs."""
        from runner.backends.docker_image import IMAGE_ROOT, ensure_image

        if request.image_ref is not None:
            name, job_path = request.image_ref
            return name, str(PurePosixPath(job_path).relative_to(IMAGE_ROOT))
        settings = request.image
        client = None
        if settings and not settings.name and settings.push_to:  # only a build needs a Docker engine
            from runner.backends import docker_client

            client = docker_client.connect()
        from runner.backends.docker_image import default_console
        from runner.launch_log import tee

        ref = ensure_image(client, request.job_file, request.image, registry_required=True,
                           out=tee(default_console(), request.log))
        return ref.name, str(PurePosixPath(ref.job_path).relative_to(IMAGE_ROOT))

    def _env(self, request: LaunchRequest) -> dict[str, str]:
        env = dict(request.env)
        env[contract.ENV_ATTEMPT_ID] = request.attempt_id
        env["PYTHONUNBUFFERED"] = "1"
        env["GPU_COUNT"] = str(request.gpu_count)  # the image's entrypoint starts torchrun for more than one
        base = self.client.transport.base_url
        if base != DEFAULT_BASE_URL:  # the pod stops itself through the same API the runner uses
            env[ENV_BASE_URL] = base
        return env

    # --- poll / stop ------------------------------------------------------------------------------
    def poll(self, handle: dict[str, Any]) -> Observation:
        from runner.backends.runpod_observe import observe
        from runner.runpod.errors import RunPodError
        from runner.runpod.timeline import PodTimeline

        last = self._looked.get(handle["pod_id"])
        if last is not None and time.monotonic() - last[0] < float(os.environ.get(ENV_POLL_SECONDS, "5")):
            return last[1]
        try:
            obs = observe(self.client, handle, self._status_reader(handle), PodTimeline.load(handle["pod_id"]))
        except RunPodError as e:  # RunPod not answering for a while: the pod is presumed alive, look again
            return Observation("running", detail=f"RunPod not answering: {e}")
        if obs.state == "running":
            self._looked[handle["pod_id"]] = (time.monotonic(), obs)
        else:
            self._looked.pop(handle["pod_id"], None)
        return obs

    def _status_reader(self, handle: dict[str, Any]) -> Callable[[], contract.Status | None]:
        def read() -> contract.Status | None:
            try:
                return contract.Status.read(self._storage(handle["run_uri"]))
            except Exception:  # a storage hiccup: judge by the pod alone this time
                return None

        return read

    def _storage(self, run_uri: str) -> Any:
        if run_uri not in self._storages:
            from trainer.storage import open_storage

            self._storages[run_uri] = open_storage(run_uri)
        return self._storages[run_uri]

    def stop(self, handle: dict[str, Any], grace_s: float = 60.0, timeout_s: float = 30.0) -> Observation:
        """Stop the pod (RunPod sends SIGTERM: an emergency checkpoint), wait up to ``grace_s`` for it
        to exit, then terminate it, so it bills nothing more. Returns how the attempt ended."""
        from runner.backends.runpod_observe import observe
        from runner.runpod.client import ALIVE
        from runner.runpod.errors import Conflict, NotFound, RunPodError
        from runner.runpod.timeline import PodTimeline

        pod_id = handle["pod_id"]
        timeline = PodTimeline.load(pod_id)

        def look() -> Any:
            seen_at = time.time()
            pod = self.client.get_pod(pod_id)
            if pod is not None:
                timeline.saw(pod, seen_at)
            return pod

        try:
            pod = look()
            if pod is not None and pod.status in ALIVE and grace_s > 0:
                with contextlib.suppress(Conflict, NotFound):
                    self.client.action(pod_id, "stop")
                deadline = time.monotonic() + grace_s
                while (pod := look()) is not None and pod.status in ALIVE:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(STOP_POLL_SECONDS)
            obs = observe(self.client, handle, self._status_reader(handle), timeline)
            before = time.time()
            self.client.terminate(pod_id)
            timeline.terminated((before + time.time()) / 2)  # ends a still-running interval, exactly
            timeline.save()
            deadline = time.monotonic() + timeout_s
            while (pod := self.client.get_pod(pod_id)) is not None and pod.status != "TERMINATED":
                if time.monotonic() > deadline:
                    raise BackendError(f"pod {pod_id} is still {pod.status} {timeout_s:.0f}s after it was terminated; "
                                       f"terminate it in the RunPod console (Pods → {handle.get('pod_name')})")
                time.sleep(STOP_POLL_SECONDS)
        except RunPodError as e:
            raise BackendError(f"could not stop pod {pod_id}: {e}; `python -m runner watch` tries again, or "
                               f"terminate it in the RunPod console (Pods → {handle.get('pod_name')})") from None
        if obs.state == "running":  # it did not stop within the grace period and was terminated
            return Observation("exited", None, "SIGKILL", f"pod {pod_id} terminated before its trainer stopped")
        return obs

    # --- billing ----------------------------------------------------------------------------------
    def billed(self, handle: dict[str, Any]) -> Billed | None:
        """When the attempt's pod ran, from its own timeline (:mod:`runner.runpod.timeline`), and what
        RunPod billed for it, from its billing buckets (None when it has billed nothing yet)."""
        from runner.runpod.errors import RunPodError
        from runner.runpod.timeline import PodTimeline

        pod_id = handle["pod_id"]
        timeline = PodTimeline.load(pod_id)
        since = timeline.started or float(handle.get("created") or time.time())
        try:
            # hour buckets from the hour the pod started: RunPod snaps the window to bucket edges, so
            # the records cover the whole pod; only their amounts matter, never their edges
            records = [r for r in self.client.billing(pod_id=pod_id, since=since - 1, bucket_size="hour")
                       if r.pod_id == pod_id]
        except RunPodError:
            return None
        if not records:
            return None
        usd = sum(r.gpu_usd + r.cpu_usd for r in records)
        disk = sum(r.disk_usd for r in records)
        return Billed(timeline.started, timeline.ended, usd, disk, note=_mismatch(timeline, usd))

    # --- logs -------------------------------------------------------------------------------------
    def logs(self, handle: dict[str, Any], follow: bool = False,
             until: Callable[[], bool] | None = None) -> Iterator[str]:
        from runner.runpod.client import ALIVE
        from runner.runpod.errors import NotFound, RunPodError

        pod_id = handle["pod_id"]
        gone = (f"(pod {pod_id} is terminated and RunPod keeps no output of it; the trainer's own log is "
                f"{handle.get('run_uri')}/{contract.TRAINER_LOG})")
        if not follow:
            try:
                yield from self.client.log_lines(pod_id, follow=False)
            except NotFound:
                yield gone
            except RunPodError as e:
                yield f"(could not read pod {pod_id}'s output: {e})"
            return
        # The stream blocks while the trainer is silent: read it in a thread, so that `until` and the
        # pod's end are checked meanwhile; reopen it when RunPod closes it while the pod still runs.
        lines: queue.Queue[str | None] = queue.Queue()
        stop = threading.Event()

        def pump() -> None:
            last_id = None  # a reopened stream resumes after the last line shown (Last-Event-ID)
            try:
                while not stop.is_set():
                    for event in self.client.logs(pod_id, follow=True, last_event_id=last_id):
                        lines.put(event.line)
                        last_id = event.event_id or last_id
                        if stop.is_set():
                            return
                    pod = self.client.get_pod(pod_id)
                    if pod is None or pod.status not in ALIVE:
                        return
            except NotFound:
                lines.put(gone)
            except RunPodError as e:
                lines.put(f"(lost pod {pod_id}'s output: {e})")
            finally:
                lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"logs-{pod_id}").start()
        try:
            yield from drain_lines(lines, until)
        finally:
            stop.set()


#: Billed compute dollars may differ from running time × rate by this much before it is reported:
#: per-second billing and the runner's view of a pod's end (to about a second) differ a little.
MISMATCH_TOLERANCE = 0.02


def _mismatch(timeline: Any, usd: float) -> str | None:
    """A sentence when RunPod billed a pod differently from its running time at its rate."""
    if not timeline.cost_per_hour or timeline.ended is None:
        return None
    seconds = timeline.running_seconds()
    expected = seconds * timeline.cost_per_hour / 3600
    if abs(usd - expected) <= max(0.0001, MISMATCH_TOLERANCE * expected):
        return None
    return (f"RunPod billed ${usd:.4f} of compute for pod {timeline.pod_id}, but it ran {seconds / 3600:.3f} h at "
            f"${timeline.cost_per_hour:.3f}/h = ${expected:.4f} as the runner saw it; the cost report uses RunPod's "
            f"dollars and the pod's own running time")


