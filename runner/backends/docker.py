"""The docker backend: each attempt is one container of the job's image, on this machine's Docker
engine or on a remote one (``DOCKER_HOST=ssh://user@gpu-host``).

- The image is found or built by :mod:`runner.backends.docker_image` (tagged by the hash of its
  inputs, so a relaunch of an unchanged job starts at once).
- The container runs ``python -m trainer run JOB --run-uri URI`` (``torchrun`` with one process
  per GPU when more than one is asked) under ``docker-init``, with host networking and the job's GPUs
  as device requests.
- The job's ``env`` and ``secrets`` never enter the container's configuration, where ``docker
  inspect`` would show them for as long as the container is kept: the trainer is started through
  ``python -m trainer.contract`` (see :func:`trainer.contract.exec_with_secrets_from_stdin`), and the
  values are written once, as one line, into the container's standard input as it starts (closed
  after: ``StdinOnce``). They live only in the trainer's memory; not in the image, the container's
  files, its logs or the runner's state, so nothing is left behind when the attempt ends.
  No restart policy: the runner's supervisor owns relaunching, and records every attempt.
- It is named after the attempt (``spot-runner-<attempt id>``) and labelled with the job and the
  attempt, so a runner that died between creating it and recording it finds it again instead of
  starting a second one.
- A run URI that is a folder of this machine is mounted into the container at the same path, and
  the trainer runs as your user so the files stay yours; a remote engine needs ``s3://`` storage.

Ended containers are kept, so ``python -m runner logs`` can show every attempt; ``runner prune``
removes those of ended jobs (:mod:`runner.prune`)."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner.backends import docker_client
from runner.backends.base import Backend, BackendError, Launched, LaunchRequest, Observation, drain_lines
from runner.backends.docker_image import default_console, ensure_image
from runner.backends.local import local_rate_per_hour
from runner.launch_log import tee
from trainer.contract import ENV_ATTEMPT_ID, SECRETS_LAUNCHER, secrets_line, trainer_command

LABEL_JOB = "org.spot-runner.job"
LABEL_ATTEMPT = "org.spot-runner.attempt"
#: GPUs of the engine's host an attempt gets when the job asks for GPUs: a number, or ``all``.
#: Default: the job's resources.gpu_count.
ENV_GPUS = "RUNNER_DOCKER_GPUS"
#: Shared memory for the container: PyTorch's data loader workers and NCCL need more than Docker's 64 MB.
SHM_SIZE = "2g"


def container_name(attempt_id: str) -> str:
    return f"spot-runner-{attempt_id}"


def _signal_of(exit_code: int | None) -> str | None:
    """Docker reports a PID 1 killed by signal N as exit code 128+N (137 for `docker kill`)."""
    if exit_code is None or not 128 < exit_code <= 128 + 64:
        return None
    try:
        return signal.Signals(exit_code - 128).name
    except ValueError:
        return f"signal {exit_code - 128}"


def start_with_env(container: Any, env: dict[str, str]) -> None:
    """Start ``container`` (made with ``stdin_open`` and no detach, its command behind the launcher of
    :data:`trainer.contract.SECRETS_LAUNCHER`) and hand it ``env`` on its standard input: attached before
    the start, so the launcher cannot miss the line; the engine closes the container's standard input
    when this one attachment ends (``StdinOnce``). The container is removed if it cannot be started."""
    import docker.errors

    try:
        sock = container.attach_socket(params={"stdin": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)  # a local engine's SocketIO wraps the socket itself
        try:
            container.start()
            raw.sendall(secrets_line(env))
        finally:
            sock.close()
            raw.close()
    except (docker.errors.APIError, OSError) as e:
        container.remove(force=True)
        raise BackendError(str(getattr(e, "explanation", None) or e)) from e


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, client: Any = None, out: Any = None):
        self._client = client
        self._out = out

    def preflight(self, gpu_count: int = 1) -> None:
        self.client  # noqa: B018 - connecting is the check: no engine, no job

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client.connect()
        return self._client

    # --- launch -----------------------------------------------------------------------------------
    def launch(self, request: LaunchRequest, timeout_s: float = 60.0) -> Launched:
        import docker.errors

        rate = local_rate_per_hour(request.price_per_hour)
        name = container_name(request.attempt_id)
        found = self._find(name)
        if found is not None:
            if found.status == "created":  # created, then the runner died before starting it
                self._start(found, request)
            return Launched(self._handle(found), None, False, rate, rate, adopted=True)

        kwargs = self._run_options(request)  # before the build: a job that cannot run here fails at once
        image = ensure_image(self.client, request.job_file, request.image, out=tee(self._out or default_console(), request.log))
        try:
            command = trainer_command(image.job_path, request.run_uri, kwargs.pop("nproc"))  # one attempt, one run: the supervisor relaunches
            # The image's entrypoint (the restart loop) is replaced: one attempt is one run. Both
            # parts are given, so none of the image's CMD is appended. The launcher in front reads
            # the environment from standard input (see _start).
            container = self.client.containers.create(
                image.name, [*SECRETS_LAUNCHER, *command], entrypoint=command[:1], name=name,
                labels={LABEL_JOB: request.job_id, LABEL_ATTEMPT: request.attempt_id}, **kwargs,
            )
        except docker.errors.Conflict:  # another runner process created it a moment ago: adopt it
            container = self.client.containers.get(name)
            return Launched(self._handle(container), None, False, rate, rate, adopted=True)
        except docker.errors.APIError as e:
            raise BackendError(self._explain(e)) from None
        self._start(container, request)
        deadline = time.monotonic() + timeout_s
        container.reload()
        while container.status == "created":
            if time.monotonic() > deadline:
                self.stop(self._handle(container), grace_s=0)
                raise BackendError(f"container {name} did not start within {timeout_s:.0f}s")
            time.sleep(0.1)
            container.reload()
        return Launched(self._handle(container), None, False, rate, rate)

    def _start(self, container: Any, request: LaunchRequest) -> None:
        try:
            start_with_env(container, dict(request.env))
        except BackendError as e:
            raise BackendError(self._explain(e.__cause__ or e)) from None

    def _run_options(self, request: LaunchRequest) -> dict[str, Any]:
        import docker.types

        # Only what says nothing about the job: its env and secrets go in through standard input.
        env = {ENV_ATTEMPT_ID: request.attempt_id, "PYTHONUNBUFFERED": "1"}
        options: dict[str, Any] = {
            "environment": env, "network_mode": "host", "shm_size": SHM_SIZE, "init": True,
            # One process per GPU asked for; without GPUs (a CPU engine) as many ranks on CPU with gloo.
            "nproc": request.gpu_count,
            # An open standard input, closed after the first attachment: the Docker SDK asks the engine
            # for StdinOnce only when detach is off (the container still starts in the background).
            "stdin_open": True, "detach": False,
        }
        if request.gpus:
            wanted = os.environ.get(ENV_GPUS, "").strip().lower() or str(request.gpu_count)
            if wanted == "all":
                options["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
                options["nproc"] = "gpu"  # torchrun: one process per visible GPU
            elif wanted.isdigit() and int(wanted) > 0:
                options["device_requests"] = [docker.types.DeviceRequest(count=int(wanted), capabilities=[["gpu"]])]
                options["nproc"] = int(wanted)
            else:
                raise BackendError(f"{ENV_GPUS}={wanted!r}: expected a number of GPUs or `all`")
        if "://" not in request.run_uri or request.run_uri.startswith("file://"):
            folder = self._local_run_folder(request.run_uri)
            # Mounted at the same path, and written as you so the files stay yours (any HOME will do).
            options["volumes"] = {str(folder): {"bind": str(folder), "mode": "rw"}}
            options["user"] = f"{os.getuid()}:{os.getgid()}"
            env["HOME"] = "/tmp"
        return options

    def _local_run_folder(self, run_uri: str) -> Path:
        if docker_client.is_remote():
            raise BackendError(
                f"the run {run_uri} is a folder on this machine, which {docker_client.describe()} cannot reach; "
                f"set `storage: s3://BUCKET/PREFIX` in the job (credentials under `secrets:`)"
            )
        folder = Path(run_uri.removeprefix("file://")).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _explain(self, error: Any) -> str:
        text = str(getattr(error, "explanation", None) or error)
        if "capabilities: [[gpu]]" in text or "nvidia" in text.lower():
            return (f"{docker_client.describe()} cannot give the container GPUs ({text}); install the NVIDIA "
                    f"Container Toolkit there, or remove resources.gpu to train on CPU")
        return f"{docker_client.describe()} could not start the container: {text}"

    def _find(self, name: str) -> Any:
        import docker.errors

        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def _handle(self, container: Any) -> dict[str, Any]:
        host = docker_client.docker_host()
        return {"container": container.name, "id": container.id, "image": container.attrs["Config"]["Image"],
                "docker_host": host if docker_client.is_remote(host) else None,
                "where": f"container {container.name} on {docker_client.describe(host)}"}

    # --- poll / stop ------------------------------------------------------------------------------
    def poll(self, handle: dict[str, Any]) -> Observation:
        import docker.errors

        try:
            container = self.client.containers.get(handle["id"])
        except docker.errors.NotFound:
            return Observation("vanished", detail=f"container {handle.get('container')} is gone (removed, or the "
                                                  f"engine's host was replaced)")
        except (docker.errors.APIError, BackendError, OSError) as e:  # engine unreachable for a moment: look again
            return Observation("running", detail=f"engine not answering: {e}")
        state = container.attrs.get("State") or {}
        if state.get("Status") in ("created", "running", "restarting", "paused"):
            return Observation("running")
        code = state.get("ExitCode")
        sig = _signal_of(code)
        detail = f"killed by {sig}" if sig else f"exit code {code}"
        if state.get("OOMKilled"):
            detail += " (out of memory)"
        if state.get("Error"):
            detail += f": {state['Error']}"
        return Observation("exited", None if sig else code, sig, detail)

    def stop(self, handle: dict[str, Any], grace_s: float = 60.0, timeout_s: float = 30.0) -> Observation:
        """``docker stop``: SIGTERM to the trainer (emergency checkpoint, exit 75), SIGKILL after ``grace_s``."""
        import docker.errors

        try:
            container = self.client.containers.get(handle["id"])
        except docker.errors.NotFound:
            return self.poll(handle)
        if container.status in ("running", "restarting", "paused", "created"):
            try:
                container.stop(timeout=max(0, int(grace_s)))
            except docker.errors.NotFound:
                return self.poll(handle)
            except docker.errors.APIError as e:
                raise BackendError(f"could not stop container {handle.get('container')}: {e.explanation or e}") from None
        deadline = time.monotonic() + timeout_s
        while (obs := self.poll(handle)).state == "running":
            if time.monotonic() > deadline:
                raise BackendError(f"container {handle.get('container')} still runs {timeout_s:.0f}s after it was "
                                   f"stopped; remove it with `docker rm -f {handle.get('container')}`")
            time.sleep(0.1)
        return obs

    # --- logs -------------------------------------------------------------------------------------
    def logs(self, handle: dict[str, Any], follow: bool = False,
             until: Callable[[], bool] | None = None) -> Iterator[str]:
        import docker.errors

        try:
            container = self.client.containers.get(handle["id"])
        except docker.errors.NotFound:
            yield f"(the container {handle.get('container')} of this attempt is gone, and its output with it)"
            return
        if not follow:
            yield from container.logs(stdout=True, stderr=True).decode("utf-8", "replace").splitlines()
            return
        # The engine's stream blocks until new output comes; read it in a thread so that `until`
        # and the container's end are checked even while the trainer is silent.
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            pending = ""
            try:
                for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=True):
                    pending += chunk.decode("utf-8", "replace")
                    *complete, pending = pending.split("\n")
                    for line in complete:
                        lines.put(line)
            finally:
                if pending:
                    lines.put(pending)
                lines.put(None)

        threading.Thread(target=pump, daemon=True, name=f"logs-{handle.get('container')}").start()
        yield from drain_lines(lines, until)
