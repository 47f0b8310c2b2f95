"""``runner tensorboard JOB``: a job's TensorBoard on this machine, for a run in a local folder or in S3.

A local run's ``tensorboard/`` folder is served as it is. An S3 run's event files are copied into a
cache folder of the runner's state (``<state>/tensorboard/<job id>``), each one again only when its
ETag changed (the trainer uploads a whole event file again as it grows), and copied again every
few seconds while TensorBoard runs, so a job that is still training shows its new steps.

TensorBoard runs as a child process on 127.0.0.1 only; Ctrl-C stops it. The S3 settings are this
shell's ``AWS_*`` variables, as for ``runner curves``."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from runner import paths
from trainer import contract

#: Seconds between two copies of an S3 run's event files while TensorBoard runs.
SYNC_EVERY_S = 10.0
START_TIMEOUT_S = 120.0
_MANIFEST = ".synced.json"


def local_logdir(run_uri: str) -> Path:
    path = urlparse(run_uri).path if run_uri.startswith("file://") else run_uri
    return Path(path).expanduser() / contract.TENSORBOARD_DIR


def cache_dir(job_id: str) -> Path:
    return paths.state_dir() / "tensorboard" / job_id


def sync_events(run_uri: str, dest: Path) -> int:
    """Copy the run's ``tensorboard/`` objects whose ETag changed into ``dest``; how many were copied."""
    from trainer.dataset_cache import open_bucket

    prefix = f"{urlparse(run_uri).path.strip('/')}/{contract.TENSORBOARD_DIR}/".lstrip("/")
    bucket = open_bucket(run_uri)
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / _MANIFEST
    try:
        synced: dict[str, str] = json.loads(manifest_path.read_text())
    except (FileNotFoundError, ValueError):
        synced = {}
    copied = 0
    try:
        for obj in bucket.objects(prefix):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.startswith(".") or "/." in rel or ".." in rel.split("/"):
                continue  # probes and temp names, and nothing that would land outside dest
            if synced.get(rel) == obj["ETag"] and (dest / rel).exists():
                continue
            if bucket.get_file(obj["Key"], dest / rel):
                synced[rel] = obj["ETag"]
                copied += 1
    finally:
        bucket.close()
    manifest_path.write_text(json.dumps(synced))
    return copied


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "data/runs", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all end the serve loop the same way (TensorBoard is stopped, not orphaned).
    SIGINT is set even when this process inherited it ignored (a parent that ignores it, as a test runner's
    worker may): the command says "Ctrl-C stops it", so it must."""

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def serve(job: str, port: int = 6006) -> None:
    """Sync (for S3), start TensorBoard on 127.0.0.1, print its URL and keep syncing until Ctrl-C."""
    from runner.show import fail, find_job, new_console, open_state
    from trainer.dataset_cache import is_remote

    state = open_state()
    row = find_job(state, job)

    if importlib.util.find_spec("tensorboard") is None:
        fail("TensorBoard is not installed here: pip install tensorboard (it comes with the project's train extra: "
             "pip install -e '.[train]')")
    console = new_console(stderr=True)
    remote = is_remote(row.run_uri)
    logdir = cache_dir(row.id) if remote else local_logdir(row.run_uri)
    if remote:
        from trainer.storage_api import StorageError

        try:
            with console.status(f"copying the event files of {row.run_uri} into {logdir}"):
                copied = sync_events(row.run_uri, logdir)
        except (StorageError, OSError) as e:
            fail(f"cannot read {row.run_uri}/{contract.TENSORBOARD_DIR}: {e}")
        console.print(f"copied {copied} event file(s) from {row.run_uri}/{contract.TENSORBOARD_DIR} to {logdir}",
                      highlight=False)
    elif not logdir.is_dir():
        fail(f"{row.id} has no TensorBoard events yet ({logdir} does not exist); its trainer writes them once it trains")
    if port and not _port_free(port):
        chosen = _free_port()
        console.print(f"port {port} is taken; using {chosen}", highlight=False)
        port = chosen
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = paths.state_dir() / "tensorboard" / f"{row.id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _stop_on_signals()
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        child = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                                  "127.0.0.1", "--port", str(port), "--reload_interval", "5"],
                                 stdout=log, stderr=subprocess.STDOUT)

    def said() -> str:
        return log_path.read_text(errors="replace").strip()[-800:]

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with console.status("starting TensorBoard"):
            while not _answers(url):
                if child.poll() is not None:
                    fail(f"TensorBoard exited with code {child.returncode}: {said()}")
                if time.monotonic() > deadline:
                    fail(f"TensorBoard did not answer on {url} within {START_TIMEOUT_S:.0f}s")
                time.sleep(0.2)
        print(f"TensorBoard for {row.id} ({row.state}): {url}", flush=True)
        console.print(f"[dim]events: {logdir}{' (copied again every 10 s)' if remote else ''}; Ctrl-C stops it[/]")
        next_sync = time.monotonic() + SYNC_EVERY_S
        while child.poll() is None:
            time.sleep(0.5)
            if remote and time.monotonic() >= next_sync:
                with contextlib.suppress(Exception):  # a blip in S3: the next round tries again
                    sync_events(row.run_uri, logdir)
                next_sync = time.monotonic() + SYNC_EVERY_S
        fail(f"TensorBoard exited with code {child.returncode}: {said()}", 1)
    except KeyboardInterrupt:
        console.print("stopping TensorBoard")
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
