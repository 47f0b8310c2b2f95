"""Prices per backend: a machine of yours (local, docker) is free unless the job says what an hour of
it costs; only RunPod jobs see RunPod's prices and spot; a CPU job's hours are machine hours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.backends.local import local_rate_per_hour
from runner.cost import estimate, job_cost
from runner.spec import load_job
from runner.state import State
from tests.fixtures.jobs import ROOT, job_spec, make_job, trainer_env


def runner(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=ROOT,
                          env=trainer_env(RUNNER_HOME=str(home), **env), timeout=120)


def test_a_docker_dry_run_shows_no_runpod_price_and_no_spot(runner_home):
    done = runner(runner_home, "submit", "jobs/quickstart.yaml", "--backend", "docker", "--gpu", "rtx3090", "--dry-run")
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    assert "$0.00/h (your own machine: free;" in flat
    assert "$0.34" not in flat and "$0.44" not in flat and "spot" not in flat, flat
    plan = json.loads(runner(runner_home, "submit", "jobs/quickstart.yaml", "--backend", "docker", "--gpu", "rtx3090",
                             "--dry-run", "--json").stdout)
    assert (plan["rate_per_hour"], plan["on_demand_rate_per_hour"], plan["price_basis"]) == (0, 0, "free")
    assert plan["capacity"] == "Docker engine on this machine" and plan["expected_usd"] == 0


def test_the_job_sets_what_an_hour_of_its_own_machine_costs(tmp_path: Path):
    for backend in ("local", "docker"):
        job = load_job(make_job(tmp_path / backend, {"backend": backend, "resources": {"price_per_hour": 0.75}}))
        est = estimate(job)
        assert (est.rate_per_hour, est.on_demand_rate_per_hour) == (0.75, 0.75), backend
        assert est.expected_usd == pytest.approx(est.expected_hours * 0.75)
    assert local_rate_per_hour(0.75) == 0.75 and local_rate_per_hour() == 0.0
    free = estimate(load_job(make_job(tmp_path / "free", {"backend": "docker", "resources": {"gpu": "rtx4090"}})))
    assert (free.rate_per_hour, free.expected_usd) == (0.0, 0.0)


def test_a_runpod_job_cannot_set_its_own_price(tmp_path: Path):
    from trainer.jobfile import JobFileError

    job = make_job(tmp_path, {"backend": "runpod", "storage": "s3://bucket/runs", "resources": {"gpu": "rtx3090",
                                                                                                "price_per_hour": 0.1}})
    with pytest.raises(JobFileError, match=r"job\.yaml:\d+: resources\.price_per_hour: the runpod backend pays runpod's "
                                           r"own prices"):
        load_job(job)
    spot = estimate(load_job(make_job(tmp_path / "ok", {"backend": "runpod", "storage": "s3://bucket/runs",
                                                         "resources": {"gpu": "rtx3090"}})))
    assert (spot.rate_per_hour, spot.on_demand_rate_per_hour) == (0.34, 0.44)


def test_a_cpu_job_is_billed_in_machine_hours_not_gpu_hours(runner_home):
    state = State.open()
    row = state.create_job(id="quickstart-1", name="quickstart", job_file="/q.yaml", job_sha256="0", spec=job_spec(),
                           workdir="/", backend="local", run_uri="/r")
    attempt = state.add_attempt(row.id, backend="local", gpu=None, gpu_count=1, spot=False, start_step=0)
    state.attempt_started(attempt, {}, gpu=None, spot=False, rate_per_hour=0, on_demand_rate_per_hour=0)
    state.attempt_ended(state.attempt(attempt.id), outcome="done", exit_code=0, detail="", end_step=300)
    state.db.execute("UPDATE billing_segments SET started = 1000, ended = 1180")
    state.update_job(row.id, state="done", step=300, max_steps=300)
    assert job_cost(state, state.job(row.id)).unit == "machine"
    state.close()
    for args in (("cost", "quickstart-1"), ("status", "quickstart-1")):
        done = runner(runner_home, *args)
        assert done.returncode == 0, done.stderr
        assert "0.05 machine hours" in done.stdout or "0.050 machine hours" in done.stdout, done.stdout
        assert "GPU hours" not in done.stdout
