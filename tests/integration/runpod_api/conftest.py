"""A RunPod emulator per test (loopback only), a client for it, and a tiny project whose "image"
runs a small stand-in trainer: it writes the attempt's status.json under the run URI (a local
folder) and answers SIGTERM with an interrupted status and exit 75, as the real trainer does."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.backends.base import LaunchRequest
from runner.catalog import load_catalog
from runner.runpod.client import RunPodClient
from runner.runpod.http import Transport
from runner.spec import Image as ImageSection
from tests.fixtures.jobs import ROOT
from tests.fixtures.runpod_emulator import RunPodEmulator
from tests.fixtures.runpod_pods import Image

IMAGE = "emu/stand-in:1"
#: argv: -c JOB --run-uri RUN. POD_MODE=done writes done at once; otherwise it runs until SIGTERM.
STAND_IN = r"""
import json, os, signal, sys, time
run = sys.argv[3]
os.makedirs(run, exist_ok=True)
def write(state, code=None):
    tmp = os.path.join(run, ".status.tmp")
    with open(tmp, "w") as f:
        json.dump({"state": state, "attempt": os.environ.get("RUNNER_ATTEMPT_ID", ""), "heartbeat": time.time(),
                   "exit_code": code, "step": 1}, f)
    os.replace(tmp, os.path.join(run, "status.json"))
def term(*_):
    write("interrupted", 75)
    sys.exit(75)
signal.signal(signal.SIGTERM, term)
print("stand-in trainer up in pod", os.environ.get("RUNPOD_POD_ID"), flush=True)
mode = os.environ.get("POD_MODE", "run")
if mode == "done":
    write("done", 0)
elif mode == "fail":
    write("failed", 2)
    sys.exit(2)
elif mode == "crash":  # a crash the restart loop gave up on: it stops its own pod, as the real one does
    write("failed", 1)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like the restart loop: its trainer has already exited
    from trainer.runpod_pod import stop_own_pod
    stop_own_pod("the trainer failed")
    sys.exit(1)
else:
    write("running")
while True:
    time.sleep(0.2)
"""


@pytest.fixture(autouse=True)
def runner_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runner's state (and its pod owner id) in this test's folder, never the user's."""
    home = tmp_path / "runner-home"
    monkeypatch.setenv("RUNNER_HOME", str(home))
    monkeypatch.setenv("RUNNER_RUNPOD_POLL_SECONDS", "0")  # every poll asks the emulator
    return home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "jobs").mkdir(parents=True)
    (root / "Dockerfile").write_text("FROM scratch\n")
    (root / "jobs" / "job.yaml").write_text("name: job\n")
    return root


@pytest.fixture
def emulator(tmp_path: Path, project: Path) -> Iterator[RunPodEmulator]:
    image = Image(IMAGE, project, (sys.executable, "-c", STAND_IN), env={"PYTHONPATH": str(ROOT)})
    with RunPodEmulator(tmp_path / "emulator", [image]) as emu:
        yield emu


@pytest.fixture
def client(emulator: RunPodEmulator) -> RunPodClient:
    return RunPodClient(Transport(emulator.api_key, emulator.url))


def launch_request(project: Path, run_uri: str, *, attempt_id: str = "job-abc-1", gpus=("rtx3090",), spot=True,
                   env: dict | None = None, max_bid: float | None = None, margin: float = 0.01,
                   events: list | None = None) -> LaunchRequest:
    catalog = load_catalog()
    return LaunchRequest(
        attempt_id=attempt_id, job_id=attempt_id.rsplit("-", 1)[0], job_file=project / "jobs" / "job.yaml",
        run_uri=run_uri, workdir=project, env=dict(env or {}), gpus=tuple(catalog.resolve(g) for g in gpus),
        spot=spot, max_bid_per_gpu=max_bid, bid_margin_per_gpu=margin, image=ImageSection(name=IMAGE),
        report=(lambda kind, message: events.append((kind, message))) if events is not None else None,
    )
