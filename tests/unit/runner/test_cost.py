from __future__ import annotations

import pytest

from runner.cost import estimate, job_cost
from runner.spec import load_job
from runner.state import State
from tests.fixtures.jobs import ROOT


def test_cost_is_billed_time_times_rate_and_saving_is_against_on_demand(runner_home):
    state = State.open()
    job = state.create_job(id="brad-1", name="brad", job_file="/j.yaml", job_sha256="0", spec={}, workdir="/",
                           backend="runpod", run_uri="s3://b/brad-1")
    for number, hours in ((1, 2.0), (2, 3.0)):
        attempt = state.add_attempt(job.id, backend="runpod", gpu="rtx3090", gpu_count=1, spot=True, start_step=0)
        state.attempt_started(attempt, {}, gpu="rtx3090", spot=True, rate_per_hour=0.34, on_demand_rate_per_hour=0.44)
        state.attempt_ended(state.attempt(attempt.id), outcome="interrupted", exit_code=75, detail="", end_step=number)
        state.db.execute("UPDATE billing_segments SET started = 1000, ended = ? WHERE attempt_id = ?",
                         (1000 + hours * 3600, attempt.id))
    cost = job_cost(state, state.job(job.id))
    assert cost.gpu_hours == pytest.approx(5.0)
    assert cost.usd == pytest.approx(5 * 0.34)
    assert cost.on_demand_usd == pytest.approx(5 * 0.44)
    assert cost.saving_usd == pytest.approx(0.5)


def test_estimate_prefers_earlier_runs_of_the_same_job(runner_home):
    job = load_job(ROOT / "jobs" / "quickstart.yaml")
    state = State.open()
    first = estimate(job, state)
    assert "catalog figure" in first.basis and first.steps == 300
    row = state.create_job(id="quickstart-1", name="quickstart", job_file="/q.yaml", job_sha256="0", spec={}, workdir="/",
                           backend="local", run_uri="/r")
    attempt = state.add_attempt(row.id, backend="local", gpu=None, gpu_count=1, spot=False, start_step=0)
    state.attempt_started(attempt, {}, gpu=None, spot=False, rate_per_hour=0, on_demand_rate_per_hour=0)
    state.attempt_ended(state.attempt(attempt.id), outcome="done", exit_code=0, detail="", end_step=300)
    state.db.execute("UPDATE attempts SET started = 0, ended = 30")
    measured = estimate(job, state)
    assert measured.seconds_per_step == pytest.approx(0.1)
    assert measured.basis == "measured over 300 earlier steps of quickstart"
    assert measured.hours == pytest.approx(300 * 0.1 / 3600)
