from __future__ import annotations

from pathlib import Path

import pytest

from runner.cost import estimate, job_cost
from runner.spec import load_job
from runner.state import State
from tests.fixtures.jobs import ROOT, job_spec


def test_cost_is_billed_time_times_rate_and_saving_is_against_on_demand(runner_home):
    state = State.open()
    job = state.create_job(id="brad-1", name="brad", job_file="/j.yaml", job_sha256="0", spec=job_spec(), workdir="/",
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
    row = state.create_job(id="quickstart-1", name="quickstart", job_file="/q.yaml", job_sha256="0", spec=job_spec(), workdir="/",
                           backend="local", run_uri="/r")
    attempt = state.add_attempt(row.id, backend="local", gpu=None, gpu_count=1, spot=False, start_step=0)
    state.attempt_started(attempt, {}, gpu=None, spot=False, rate_per_hour=0, on_demand_rate_per_hour=0)
    state.attempt_ended(state.attempt(attempt.id), outcome="done", exit_code=0, detail="", end_step=300)
    state.db.execute("UPDATE attempts SET started = 0, ended = 30")
    measured = estimate(job, state)
    assert measured.seconds_per_step == pytest.approx(0.1)
    assert measured.basis == "measured over 300 earlier steps of quickstart"
    assert measured.hours == pytest.approx(300 * 0.1 / 3600)


def long_brad(tmp_path) -> Path:
    """jobs/gpt2_lora.yaml made 25 hours long at the catalog's throughput (1.6384 s a step on an RTX 3090),
    with a 20-minute checkpoint interval."""
    import yaml

    doc = yaml.safe_load((ROOT / "jobs" / "gpt2_lora.yaml").read_text())
    doc["train"]["max_steps"] = 54_932
    doc["train"]["checkpoint"] = {"every_steps": 100_000, "every_minutes": 20, "keep_last": 3}
    path = tmp_path / "brad25.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_dry_run_adds_the_expected_overhead_of_preemptions_at_the_observed_rate(runner_home, tmp_path, capsys):
    import json

    from runner.cli import main
    from runner.interval import expected

    path = long_brad(tmp_path)
    main(["submit", str(path), "--dry-run", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["estimated_hours"] == pytest.approx(25.0, abs=0.001)  # training alone, from the catalog figure
    assert plan["estimate_basis"].startswith("catalog figure for causal_lm_lora on rtx3090")
    # Nothing observed on rtx3090 yet: the prior, one preemption per 4 h; a 30 s checkpoint assumed; 5 min a launch.
    assert plan["preemption_mtbf_hours"] == 4.0 and plan["preemption_basis"].startswith("assumed 1 per 4 h")
    assert plan["checkpoint_seconds"] == 30.0 and plan["checkpoint_interval_minutes"] == 20.0
    e = expected(plan["estimated_hours"], 20.0, 30.0, 4.0, 5.0)
    assert plan["expected_hours"] == pytest.approx(e.uptime_h, rel=1e-4)
    assert plan["expected_preemptions"] == pytest.approx(e.preemptions, rel=1e-4)
    disks = (50 + 100) * 0.10 / 730  # container disk and volume, per hour
    assert plan["expected_usd"] == pytest.approx(e.uptime_h * (0.34 + disks), rel=1e-4)
    assert plan["expected_usd"] > plan["estimated_usd"]

    # Preemptions observed on rtx3090 spot: two in 3 hours, so with the prior (2 + 1) / (3 + 4) per hour.
    state = State.open()
    job = state.create_job(id="other-1", name="other", job_file="/o.yaml", job_sha256="0", spec=job_spec(), workdir="/",
                           backend="runpod", run_uri="s3://b/o")
    for outcome in ("interrupted", "interrupted", "done"):
        a = state.add_attempt(job.id, backend="runpod", gpu="rtx3090", gpu_count=1, spot=True, start_step=0)
        state.attempt_started(a, {}, gpu="rtx3090", spot=True, rate_per_hour=0.34, on_demand_rate_per_hour=0.44)
        state.attempt_ended(state.attempt(a.id), outcome=outcome, exit_code=None, detail="", end_step=None)
        state.db.execute("UPDATE billing_segments SET started = 0, ended = 3600 WHERE attempt_id = ?", (a.id,))
    state.close()
    main(["submit", str(path), "--dry-run", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["preemption_mtbf_hours"] == pytest.approx(7 / 3)
    assert plan["preemption_basis"] == "2 preemptions in 3.0 spot hours on rtx3090, with a prior of 1 per 4 h"
    assert plan["expected_preemptions"] == pytest.approx(expected(plan["estimated_hours"], 20.0, 30.0, 7 / 3, 5.0).preemptions, rel=1e-4)
    main(["submit", str(path), "--dry-run"])
    text = capsys.readouterr().out
    for words in ("25.0 h of training", "catalog figure", "preemptions", "expected, one per 2.3 h", "of work redone",
                  "Young/Daly would say", "expected ($8.50 for the training alone; on-demand $"):
        assert words in text, text
