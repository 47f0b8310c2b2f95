"""`runner prune` and RunPod: pods of this runner that no active attempt owns are terminated (listed
first by --dry-run, which terminates nothing); the pod of an active job's running attempt, pods of
another runner's state and pods not made by the runner at all are never touched."""

from __future__ import annotations

import json
import subprocess
import sys

from runner.backends.runpod import RunPodBackend
from runner.state import DONE, State
from tests.fixtures.jobs import ROOT, job_spec, trainer_env
from tests.integration.runpod_api.conftest import IMAGE, launch_request

RTX3090 = "NVIDIA GeForce RTX 3090"


def prune(emulator, home, *args: str) -> subprocess.CompletedProcess:
    # No Docker engine for this state: the command says so and still looks at the pods.
    env = trainer_env(**emulator.env(), RUNNER_HOME=str(home), DOCKER_HOST=f"unix://{home}/no-engine.sock")
    return subprocess.run([sys.executable, "-m", "runner", "prune", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def test_prune_terminates_only_our_pods_that_no_active_attempt_owns(emulator, client, project, runner_home, tmp_path):
    state = State(runner_home / "state.db")
    backend = RunPodBackend(client=client)

    def job(job_id: str) -> str:
        state.create_job(id=job_id, name=job_id, job_file="j.yaml", job_sha256="0", spec=job_spec(), workdir=".",
                         backend="runpod", run_uri=str(tmp_path / job_id))
        attempt = state.add_attempt(job_id, backend="runpod", gpu="rtx3090", gpu_count=1, spot=True, start_step=0)
        handle = backend.launch(launch_request(project, str(tmp_path / job_id), attempt_id=attempt.id)).handle
        state.attempt_started(attempt, handle, gpu="rtx3090", spot=True, rate_per_hour=0.2, on_demand_rate_per_hour=0.4)
        return handle["pod_id"]

    ended = job("ended")
    state.set_job_state("ended", DONE, "finished")  # its pod outlived it (a runner killed before terminating it)
    active = job("active")
    stray = backend.launch(launch_request(project, str(tmp_path / "x"), attempt_id="forgotten-1")).handle["pod_id"]
    foreign = client.create_pod({"name": "spot-runner-someoneelse-other-1", "image": IMAGE,
                                 "gpu": {"id": RTX3090, "count": 1}, "args": f"j --run-uri {tmp_path / 'y'}"}).id
    notebook = client.create_pod({"name": "my-notebook", "image": IMAGE, "gpu": {"id": RTX3090, "count": 1},
                                  "args": f"j --run-uri {tmp_path / 'z'}"}).id
    state.close()
    everything = {ended, active, stray, foreign, notebook}

    dry = prune(emulator, runner_home, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert {r["id"] for r in listed["removals"] if r["kind"] == "pod"} == {ended, stray}
    assert any("containers and images not checked" in n for n in listed["notes"])
    assert {p.id for p in emulator.live_pods()} == everything

    done = prune(emulator, runner_home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "terminated pod " in done.stdout and ended in done.stdout and stray in done.stdout
    assert {p.id for p in emulator.live_pods()} == {active, foreign, notebook}
    events = State(runner_home / "state.db").events("ended")
    assert any(e.kind == "pod_terminated" and ended in e.message for e in events)
    assert json.loads(prune(emulator, runner_home, "--json").stdout)["removals"] == []
