"""The local backend: each attempt is the trainer as a subprocess of this machine.

The embedded default: no Docker, no GPU, no account. Each attempt runs as
``python -m trainer run JOB --run-uri URI`` (through torchrun with one process per GPU when the job
asks for more than one; not the trainer's restart-loop: the runner's
supervisor owns the relaunch policy and records every attempt) under a small parent
(:mod:`runner.backends.local_attempt`) in a session of its own, so it survives the runner. Its pid
and start time are recorded, so a restarted runner adopts it, and pid reuse is told apart.
Output goes to ``<state dir>/attempts/<attempt id>/output.log``."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner import paths, proc
from runner.backends.base import Backend, BackendError, Launched, LaunchRequest, Observation
from runner.backends.local_attempt import EXIT_RECORD, TRAINER_RECORD, WRAPPER_RECORD, write_json
from trainer.contract import ENV_ATTEMPT_ID, trainer_command

LAUNCH_RECORD = "launch.json"
LOCK_FILE = "attempt.lock"
OUTPUT_LOG = "output.log"
#: Variables of the runner's own environment the trainer needs to start at all. Nothing else is
#: inherited: credentials reach the trainer only when the job lists them under ``secrets:``.
PASS_THROUGH = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
    "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE", "TORCH_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
)


def local_rate_per_hour(price_per_hour: float | None = None) -> float:
    """What an hour of a machine of yours costs: the job's ``resources.price_per_hour``, else
    ``RUNNER_LOCAL_USD_PER_HOUR``, else nothing."""
    from runner.cost import own_machine_rate

    try:
        return own_machine_rate(price_per_hour)
    except ValueError as e:
        raise BackendError(str(e)) from None


def nvidia_gpu_count() -> int | None:
    """The NVIDIA GPUs this machine shows (``nvidia-smi -L``, honouring CUDA_VISIBLE_DEVICES), or None
    when it has no NVIDIA driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    count = sum(1 for line in out.splitlines() if line.startswith("GPU "))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = min(count, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return count


def _check_gpus(wanted: int, found: int | None) -> None:
    if found is not None and found < wanted:
        raise BackendError(f"the job asks for {wanted} GPUs (resources.gpu_count) and this machine has {found}; "
                           f"lower resources.gpu_count, or run it with --backend runpod")


def _handle(pid: int, ident: str | None, adir: Path) -> dict[str, Any]:
    return {"pid": pid, "ident": ident, "attempt_dir": str(adir), "where": f"pid {pid} on this machine" if pid else "this machine"}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def trainer_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a trainer started on this machine: what it needs of the runner's own
    (:data:`PASS_THROUGH`), then ``extra`` (the job's settings and secrets)."""
    env = {k: v for k, v in os.environ.items() if k in PASS_THROUGH or k.startswith("LC_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    # The trainer must be importable whatever the job's working directory is.
    spec = importlib.util.find_spec("trainer")
    if spec is not None and spec.origin:
        root = str(Path(spec.origin).resolve().parent.parent)
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in parts if p != root])
    return env


class LocalBackend(Backend):
    name = "local"

    def __init__(self, root: Path | None = None):
        self.root = root or paths.attempts_dir()
        self._children: dict[str, subprocess.Popen] = {}  # attempts this process started: reaped here

    # --- launch -----------------------------------------------------------------------------------
    def attempt_dir(self, attempt_id: str) -> Path:
        return self.root / attempt_id

    def launch(self, request: LaunchRequest, timeout_s: float = 60.0) -> Launched:
        rate = local_rate_per_hour(request.price_per_hour)
        adir = self.attempt_dir(request.attempt_id)
        adir.mkdir(parents=True, exist_ok=True)
        # The attempt's lock is the key that makes launch idempotent: it is taken here, inherited by
        # the wrapper at fork and held for the wrapper's whole life. Busy means the attempt runs,
        # even in the instant before anything about it was written down.
        lock = os.open(adir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Launched(self._await_running(adir, timeout_s), None, False, rate, rate, adopted=True)
            found = self._find(adir)  # launched before and ended (or lost) since
            if found is not None:
                return Launched(found, None, False, rate, rate, adopted=True)
            nproc = self._processes(request)
            command = [sys.executable, "-m", "runner.backends.local_attempt", "--attempt-dir", str(adir),
                       "--lock-fd", str(lock), "--",
                       *trainer_command(str(request.job_file), request.run_uri, nproc, python=sys.executable)]
            with open(adir / OUTPUT_LOG, "ab") as log:
                child = subprocess.Popen(command, cwd=request.workdir, env=self._env(request), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock,))
        finally:
            os.close(lock)  # the wrapper holds its own copy of the lock
        self._children[str(adir)] = child
        handle = _handle(child.pid, proc.identity(child.pid), adir)
        write_json(adir / LAUNCH_RECORD, handle)
        # "Launched" means the trainer process exists (or the attempt already ended), within the deadline.
        deadline = time.monotonic() + timeout_s
        while not (adir / TRAINER_RECORD).exists() and child.poll() is None:
            if time.monotonic() > deadline:
                self.stop(handle, grace_s=0)
                raise BackendError(f"the local attempt did not start within {timeout_s:.0f}s; see {adir / OUTPUT_LOG}")
            time.sleep(0.02)
        return Launched(handle, None, False, rate, rate)

    def preflight(self, gpu_count: int = 1) -> None:
        if gpu_count > 1:
            _check_gpus(gpu_count, nvidia_gpu_count())

    def _processes(self, request: LaunchRequest) -> int:
        """One trainer process per GPU the job asks for (torchrun for more than one). A machine with
        fewer NVIDIA GPUs than that is refused; one with none runs the ranks on CPU (gloo)."""
        wanted = request.gpu_count
        if wanted <= 1:
            return 1
        found = nvidia_gpu_count()
        _check_gpus(wanted, found)
        if request.report is not None:
            where = f"one per GPU of {found}" if found else "on CPU with gloo: this machine shows no NVIDIA GPU"
            request.report("launch", f"torchrun with {wanted} processes ({where})")
        return wanted

    def _find(self, adir: Path) -> dict[str, Any] | None:
        """The handle of an attempt that was launched before: the runner's record, else the wrapper's own
        (the runner died before writing its record), else its exit record."""
        for name in (LAUNCH_RECORD, WRAPPER_RECORD):
            record = _read_json(adir / name)
            if record is not None:
                handle = _handle(record["pid"], record["ident"], adir)
                write_json(adir / LAUNCH_RECORD, handle)
                return handle
        if (adir / EXIT_RECORD).exists():
            handle = _handle(0, None, adir)
            write_json(adir / LAUNCH_RECORD, handle)
            return handle
        return None

    def _await_running(self, adir: Path, timeout_s: float) -> dict[str, Any]:
        """The handle of an attempt whose wrapper holds the lock: it writes its record as it starts."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._find(adir)
            if found is not None:
                return found
            for pid in proc.find_by_cmdline(f"--attempt-dir {adir} "):
                return _handle(pid, proc.identity(pid), adir)
            if time.monotonic() > deadline:
                raise BackendError(f"attempt {adir.name} is running (it holds {adir / LOCK_FILE}) but could not be "
                                   f"found within {timeout_s:.0f}s; stop it by hand before relaunching")
            time.sleep(0.05)

    def _env(self, request: LaunchRequest) -> dict[str, str]:
        return trainer_environment({**request.env, ENV_ATTEMPT_ID: request.attempt_id})

    # --- poll / stop ------------------------------------------------------------------------------
    def _reap(self, handle: dict[str, Any]) -> None:
        child = self._children.get(handle.get("attempt_dir", ""))
        if child is not None and child.poll() is not None:
            self._children.pop(handle["attempt_dir"], None)

    def poll(self, handle: dict[str, Any]) -> Observation:
        self._reap(handle)
        adir = Path(handle["attempt_dir"])
        for _ in range(2):  # the second look closes the race with an exit record written just now
            record = _read_json(adir / EXIT_RECORD)
            if record is not None:
                code, sig = record.get("exit_code"), record.get("signal")
                return Observation("exited", code, sig, f"killed by {sig}" if sig else f"exit code {code}")
            if proc.is_alive(handle.get("pid"), handle.get("ident")):
                return Observation("running")
        return Observation("vanished", detail=f"process {handle.get('pid')} is gone without recording an exit "
                                              f"(killed together with its trainer, or the machine restarted)")

    def _trainer(self, handle: dict[str, Any]) -> tuple[int | None, str | None]:
        record = _read_json(Path(handle["attempt_dir"]) / TRAINER_RECORD) or {}
        return record.get("pid"), record.get("ident")

    def _alive(self, handle: dict[str, Any]) -> tuple[bool, bool]:
        self._reap(handle)
        wrapper = proc.is_alive(handle.get("pid"), handle.get("ident"))
        return wrapper, proc.is_alive(*self._trainer(handle))

    def stop(self, handle: dict[str, Any], grace_s: float = 60.0, timeout_s: float = 30.0) -> Observation:
        wrapper, trainer = self._alive(handle)
        with contextlib.suppress(ProcessLookupError):
            if wrapper:
                os.kill(handle["pid"], signal.SIGTERM)  # forwarded to the trainer: emergency checkpoint, exit 75
            elif trainer:
                os.kill(self._trainer(handle)[0], signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while any(self._alive(handle)) and time.monotonic() < deadline:
            time.sleep(0.05)
        wrapper, trainer = self._alive(handle)
        if wrapper or trainer:
            with contextlib.suppress(ProcessLookupError):
                if wrapper:
                    os.killpg(handle["pid"], signal.SIGKILL)  # the wrapper leads its own process group
                if trainer:
                    os.kill(self._trainer(handle)[0], signal.SIGKILL)
            deadline = time.monotonic() + timeout_s
            while any(self._alive(handle)):
                if time.monotonic() > deadline:
                    raise BackendError(f"attempt process {handle.get('pid')} is still alive {timeout_s:.0f}s after SIGKILL")
                time.sleep(0.05)
        return self.poll(handle)

    # --- logs -------------------------------------------------------------------------------------
    def logs(self, handle: dict[str, Any], follow: bool = False,
             until: Callable[[], bool] | None = None) -> Iterator[str]:
        path = Path(handle["attempt_dir"]) / OUTPUT_LOG
        pending = ""
        with open(path, encoding="utf-8", errors="replace") if path.exists() else open(os.devnull) as f:
            while True:
                chunk = f.read(1 << 16)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split("\n")
                    yield from lines
                    continue
                if not follow or (until and until()) or self.poll(handle).ended:
                    rest = f.read()
                    pending += rest
                    if rest:
                        continue
                    break
                time.sleep(0.2)
        if pending:
            yield pending
