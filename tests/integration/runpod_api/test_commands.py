"""The runner's commands with a RunPod key: `gpus` shows the live catalog (cached briefly), every
command first terminates pods of ours that no active attempt owns and says so, and a pod's output
can be followed while it runs."""

from __future__ import annotations

import json
import subprocess
import sys

from runner.backends.runpod import RunPodBackend
from runner.state import State
from tests.fixtures.jobs import ROOT, job_spec, trainer_env
from tests.integration.runpod_api.conftest import launch_request

RTX3090 = "NVIDIA GeForce RTX 3090"


def cli(emulator, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=ROOT,
                          env=trainer_env(**emulator.env(), **env), timeout=60)


def catalog_calls(emulator) -> int:
    return sum(1 for _m, p, _s in emulator.requests if p == "/v2/catalog/gpus")


def test_gpus_lists_the_live_catalog_and_caches_it_briefly(emulator):
    emulator.set_price(RTX3090, securePrice=0.46, communityPrice=0.41, secureSpotPrice=0.25, communitySpotPrice=0.19,
                       secureMinimumBidPrice=0.2, communityMinimumBidPrice=0.17)
    emulator.exhaust(RTX3090)
    done = cli(emulator, "gpus", "--json")
    assert done.returncode == 0, done.stderr
    row = next(r for r in json.loads(done.stdout) if r["id"] == RTX3090)
    assert row == {"alias": "rtx3090", "id": RTX3090, "vram_gb": 24, "on_demand_per_hour": 0.41,
                   "spot_per_hour": 0.19, "minimum_bid_per_hour": 0.17, "stock": "NONE", "source": "runpod"}
    emulator.set_price(RTX3090, communityPrice=0.39)
    assert json.loads(cli(emulator, "gpus", "--json").stdout)[0]["on_demand_per_hour"] == 0.41  # cached
    assert catalog_calls(emulator) == 1
    fresh = cli(emulator, "gpus", "--json", RUNNER_RUNPOD_CATALOG_SECONDS="0")
    assert json.loads(fresh.stdout)[0]["on_demand_per_hour"] == 0.39 and catalog_calls(emulator) == 2
    table = cli(emulator, "gpus")
    assert "rtx3090" in table.stdout and "$0.170" in table.stdout and "stock" in table.stdout


def test_every_command_first_terminates_our_pods_that_no_active_attempt_owns(emulator, client, project, runner_home):
    state = State(runner_home / "state.db")
    job = state.create_job(id="job-abc", name="job", job_file="j.yaml", job_sha256="0", spec=job_spec(), workdir=".",
                           backend="runpod", run_uri=str(runner_home / "run"))
    attempt = state.add_attempt(job.id, backend="runpod", gpu="rtx3090", gpu_count=1, spot=True, start_step=0)
    handle = RunPodBackend(client=client).launch(launch_request(project, str(runner_home / "run"),
                                                                attempt_id=attempt.id)).handle
    state.attempt_ended(attempt, outcome="interrupted", exit_code=None, detail="", end_step=0)
    state.close()
    done = cli(emulator, "list")
    assert done.returncode == 0, done.stderr
    assert f"runpod: terminated RunPod pod {handle['pod_id']}" in done.stderr and "its attempt ended" in done.stderr
    assert emulator.live_pods() == []
    again = cli(emulator, "list")
    assert "runpod:" not in again.stderr  # nothing left to say


def test_logs_follow_streams_a_running_pods_output_until_it_ends(emulator, client, project, tmp_path):
    backend = RunPodBackend(client=client)
    handle = backend.launch(launch_request(project, str(tmp_path / "run"))).handle
    lines = backend.logs(handle, follow=True)
    assert next(lines).startswith("stand-in trainer up in pod " + handle["pod_id"])
    emulator.preempt(handle["pod_id"], kill_after=1)
    assert list(lines) == []  # the stream ends with the pod
    backend.stop(handle, grace_s=0)
    assert "is terminated" in next(backend.logs(handle))
