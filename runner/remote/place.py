"""Where a supervisor runs, and starting and stopping it there: a container on any Docker engine
(``DOCKER_HOST`` may be ``ssh://…``), or a small RunPod CPU pod (REST v2 ``POST /v2/pods`` with
``cpu``). Both run the project's own image in supervisor mode (``python -m runner supervisor run
--storage ROOT``); one supervisor per storage root, named after it, so ``up`` twice starts one.

Credentials reach it as they reach a trainer: through the container's standard input on Docker
(never in its configuration, where ``docker inspect`` would show them), in the pod's environment on
RunPod (which keeps them in the pod and nowhere else). The RunPod account key goes as
``RUNNER_RUNPOD_ACCOUNT_KEY``: RunPod sets ``RUNPOD_API_KEY`` in a pod to a key that may act on that
pod only."""

from __future__ import annotations

import contextlib
import hashlib
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.remote import (
    ENV_ACCOUNT_KEY,
    ENV_IMAGE,
    ENV_PLACE,
    ENV_USD_PER_HOUR,
    PLACES,
    control,
    control_root,
    lease_seconds,
)
from runner.remote.store import open_store
from trainer.contract import AWS_ENV, ENV_RUNPOD_API_KEY, ENV_RUNPOD_BASE_URL, SECRETS_LAUNCHER

#: The CPU pod a RunPod supervisor runs on: the smallest flavor RunPod lists (2 vCPUs, 4 GB).
RUNPOD_CPU = {"id": "cpu3c", "vcpuCount": 2}
RUNPOD_DISK_GB = 10
#: Settings of this machine's runner passed on to the supervisor (how often it looks, grace periods).
TUNING = ("RUNNER_POLL_SECONDS", "RUNNER_STOP_GRACE_SECONDS", "RUNNER_MIN_STALE_SECONDS", "RUNNER_RUNPOD_POLL_SECONDS",
          "RUNNER_SUPERVISOR_LEASE_SECONDS", "RUNNER_SUPERVISOR_CONTROL_SECONDS", "RUNNER_SUPERVISOR_SNAPSHOT_SECONDS",
          "RUNNER_SUPERVISOR_IDLE_SECONDS")
LABEL_ROOT = "org.spot-runner.supervisor"


class PlaceError(Exception):
    """The supervisor cannot be started or stopped there: the message says why and what to do."""


@dataclass(frozen=True)
class Started:
    where: str  # "docker container …" / "RunPod pod …"
    fresh: bool  # False: one was running already


def supervisor_name(storage_root: str) -> str:
    return f"spot-runner-supervisor-{hashlib.sha256(storage_root.rstrip('/').encode()).hexdigest()[:10]}"


def credentials(environ: Mapping[str, str], secret_names: list[str]) -> dict[str, str]:
    """What the supervisor needs from this shell: S3 and RunPod access, and the jobs' secrets (which it
    hands to each pod it launches, as the runner here would)."""
    values = {name: environ[name] for name in (*AWS_ENV, *secret_names, ENV_RUNPOD_BASE_URL) if environ.get(name)}
    if environ.get(ENV_RUNPOD_API_KEY):
        values[ENV_ACCOUNT_KEY] = environ[ENV_RUNPOD_API_KEY]
    if environ.get(ENV_USD_PER_HOUR):
        values[ENV_USD_PER_HOUR] = environ[ENV_USD_PER_HOUR]
    return values


def settings(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: environ[name] for name in TUNING if environ.get(name)}


def ensure_up(on: str, storage_root: str, image: str | None, environ: Mapping[str, str],
              secret_names: list[str]) -> Started:
    """A supervisor for ``storage_root`` on ``on`` (docker or runpod): the one running, or a new one."""
    if on not in PLACES:
        raise PlaceError(f"--on {on!r}: expected one of: {', '.join(PLACES)}")
    image = environ.get(ENV_IMAGE) or image
    if not image:
        raise PlaceError(f"no image for the supervisor: give --image, or set {ENV_IMAGE} (any image of this project: "
                         f"the jobs' own image will do)")
    env = credentials(environ, secret_names)
    if on == "docker":
        return _docker_up(storage_root, image, env, settings(environ))
    return _runpod_up(storage_root, image, env, settings(environ))


def _running_elsewhere(storage_root: str) -> Started | None:
    """A supervisor of the root that is alive somewhere else than where this one would start (its record)."""
    record = control.read_supervisor(open_store(control_root(storage_root)))
    if control.supervisor_alive(record, lease_seconds()):
        return Started(str((record or {}).get("place") or "elsewhere"), fresh=False)
    return None


def down(on: str, storage_root: str) -> str:
    """Stop the supervisor of ``storage_root`` on ``on``: it gives back its leases first. What was done."""
    return _docker_down(storage_root) if on == "docker" else _runpod_down(storage_root)


# --- Docker ----------------------------------------------------------------------------------------------
def _docker() -> Any:
    from runner.backends import docker_client
    from runner.backends.base import BackendError

    try:
        return docker_client.connect()
    except BackendError as e:
        raise PlaceError(str(e)) from None


def _docker_up(storage_root: str, image: str, secrets: dict[str, str], tuning: dict[str, str]) -> Started:
    import docker.errors

    from runner.backends import docker_client
    from runner.backends.base import BackendError
    from runner.backends.docker import start_with_env

    client = _docker()
    name = supervisor_name(storage_root)
    where = f"docker container {name} on {docker_client.describe()}"
    try:
        old = client.containers.get(name)
        if old.status in ("running", "restarting", "created"):
            return Started(where, fresh=False)
        old.remove(force=True)  # ended: its credentials were in its memory only, so a new one is made
    except docker.errors.NotFound:
        if (elsewhere := _running_elsewhere(storage_root)) is not None:
            return elsewhere
    command = [*SECRETS_LAUNCHER, "python", "-m", "runner", "supervisor", "run", "--storage", storage_root]
    try:
        container = client.containers.create(
            image, command, entrypoint=["python"], name=name, labels={LABEL_ROOT: storage_root},
            environment={**tuning, ENV_PLACE: where, "PYTHONUNBUFFERED": "1"}, network_mode="host", init=True,
            stdin_open=True, detach=False)
        start_with_env(container, secrets)
    except docker.errors.ImageNotFound:
        raise PlaceError(f"{docker_client.describe()} has no image {image}: build the project's image there, or give "
                         f"one it can pull ({ENV_IMAGE} or --image)") from None
    except (docker.errors.APIError, BackendError) as e:
        raise PlaceError(f"{docker_client.describe()} could not start the supervisor: {e}") from None
    return Started(where, fresh=True)


def _docker_down(storage_root: str) -> str:
    import docker.errors

    client = _docker()
    name = supervisor_name(storage_root)
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return f"no supervisor container {name}"
    container.stop(timeout=30)  # SIGTERM: it gives back its leases and says it stopped
    output = container.logs().decode("utf-8", "replace").strip().splitlines()[-3:]
    container.remove(force=True)
    return f"stopped and removed docker container {name}" + "".join(f"\n  {line}" for line in output)


# --- RunPod -----------------------------------------------------------------------------------------------
def _runpod_up(storage_root: str, image: str, secrets: dict[str, str], tuning: dict[str, str]) -> Started:
    from runner.runpod.client import ALIVE, RunPodClient
    from runner.runpod.errors import RunPodError
    from runner.runpod.launch import look_up_by_name

    if ENV_ACCOUNT_KEY not in secrets:
        raise PlaceError(f"a supervisor on RunPod needs a RunPod API key: export {ENV_RUNPOD_API_KEY}")
    client = RunPodClient()
    name = supervisor_name(storage_root)
    try:
        pods = client.pods_named(name)
        for pod in pods:
            if pod.status in ALIVE:
                return Started(f"RunPod pod {pod.id}", fresh=False)
            client.terminate(pod.id)  # stopped or failed: a new one gets the credentials again
        if not pods and (elsewhere := _running_elsewhere(storage_root)) is not None:
            return elsewhere
        body = {"name": name, "image": image, "cpu": dict(RUNPOD_CPU), "cloud": "SECURE", "disk": RUNPOD_DISK_GB,
                "env": {**tuning, **secrets, ENV_PLACE: f"RunPod pod {name}"},
                # CreatePodRequest.args: one string, given to the image's entrypoint (supervisor mode)
                "args": shlex.join(["supervisor", "run", "--storage", storage_root])}
        try:
            pod = client.create_pod(body)
        except RunPodError as e:
            if not e.retryable:
                raise
            found = look_up_by_name(client, name, 60.0)  # it may exist all the same: never make two
            if found is None:
                raise
            pod = found
    except RunPodError as e:
        raise PlaceError(f"RunPod could not start the supervisor pod: {e}") from None
    return Started(f"RunPod pod {pod.id} ({RUNPOD_CPU['id']}, {RUNPOD_CPU['vcpuCount']} vCPUs, "
                   f"${pod.cost_per_hour:.3f}/h)", fresh=True)


def _runpod_down(storage_root: str) -> str:
    from runner.runpod.client import ALIVE, RunPodClient
    from runner.runpod.errors import Conflict, NotFound, RunPodError

    client = RunPodClient()
    name = supervisor_name(storage_root)
    done = []
    try:
        for pod in client.pods_named(name):
            if pod.status in ALIVE:  # stop first: SIGTERM, so it gives back its leases
                with contextlib.suppress(Conflict, NotFound):
                    client.action(pod.id, "stop")
                deadline = time.monotonic() + 30
                while (now := client.get_pod(pod.id)) is not None and now.status in ALIVE and time.monotonic() < deadline:
                    time.sleep(1)
            client.terminate(pod.id)
            done.append(pod.id)
    except RunPodError as e:
        raise PlaceError(f"could not stop the supervisor pod {name}: {e}; terminate it in the RunPod console") from None
    return f"terminated RunPod pod {', '.join(done)}" if done else f"no supervisor pod {name}"
