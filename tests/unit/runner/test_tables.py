"""Tables never cut a value a user needs: on an 80- and a 60-column terminal every id, state, number and
dollar amount of `status`, `list`, `simulate` and `cost` appears whole (free text such as a job's reason
wraps at its spaces), and nothing is shortened with an ellipsis."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.state import State
from tests.fixtures.jobs import ROOT, job_spec, trainer_env

REASONS = {
    "quickstart-3f9a1c": ("running", "attempt 2 interrupted: heartbeat stale for 61s; relaunching from the last checkpoint"),
    "brad-finetune-5e0d2b.style_encoder": ("failed", "stage vqvae ended failed, so stage style_encoder cannot start; "
                                                     "submit the pipeline again to go on from stage vqvae"),
    "gpt2-lora-77aa01": ("over_budget", "stopped at step 1200 after spending $10.02 of the $10.00 budget"),
}
GPUS = {"quickstart-3f9a1c": None, "brad-finetune-5e0d2b.style_encoder": ["rtx3090", "rtx4090", "a5000"],
        "gpt2-lora-77aa01": "rtx3090"}


@pytest.fixture
def jobs(runner_home: Path) -> dict[str, str]:
    state = State.open()
    for i, (job_id, (job_state, reason)) in enumerate(REASONS.items()):
        gpu = GPUS[job_id]
        spec = job_spec({"name": job_id.rsplit("-", 1)[0], "backend": "local" if gpu is None else "runpod",
                         **({"resources": {"gpu": gpu}} if gpu else {})})
        state.create_job(id=job_id, name=spec.name, job_file="/jobs/x.yaml", job_sha256="0", spec=spec, workdir="/",
                         backend=spec.backend, run_uri=f"s3://runs/{job_id}", max_steps=1_254_000)
        attempt = state.add_attempt(job_id, backend=spec.backend, gpu=None if gpu is None else "rtx3090", gpu_count=1,
                                    spot=gpu is not None, start_step=0)
        state.attempt_started(attempt, {}, gpu=None if gpu is None else "rtx3090", spot=gpu is not None,
                              rate_per_hour=0.0 if gpu is None else 0.34, on_demand_rate_per_hour=0.44)
        state.attempt_ended(state.attempt(attempt.id), outcome="interrupted", exit_code=75, detail=reason, end_step=1200)
        state.db.execute("UPDATE billing_segments SET started = 1000, ended = ? WHERE attempt_id = ?",
                         (1000 + (i + 1) * 3 * 3600, attempt.id))
        state.update_job(job_id, state=job_state, reason=reason, step=1200 + i, preemptions=i)
    state.close()
    return {k: v[1] for k, v in REASONS.items()}


def run(home: Path, columns: int, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, cwd=ROOT,
                          env=trainer_env(RUNNER_HOME=str(home), COLUMNS=str(columns)), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def assert_whole(out: str, values: list[str], texts: list[str] = ()) -> None:
    assert "…" not in out, out
    for value in values:
        assert value in out, f"{value!r} is not whole in:\n{out}"
    for text in texts:  # free text may wrap, never lose a word
        for word in text.split():
            assert word in out, f"{word!r} of {text!r} is missing from:\n{out}"


@pytest.mark.parametrize("columns", [80, 60])
def test_status_and_list_show_every_id_state_and_reason_whole(jobs, runner_home, columns):
    for args in (("status",), ("list",)):
        out = run(runner_home, columns, *args)
        assert_whole(out, [*jobs, "running*", "failed", "over_budget", "rtx3090,rtx4090,a5000", "1200/1254000",
                           "1202/1254000"], list(jobs.values()))


@pytest.mark.parametrize("columns", [80, 60])
def test_the_cost_table_shows_every_id_and_dollar_amount_whole(jobs, runner_home, columns):
    report = json.loads(run(runner_home, columns, "cost", "--json"))
    out = run(runner_home, columns, "cost")
    money = lambda x: f"${x:,.2f}"  # noqa: E731
    values = [c["job_id"] for c in report["jobs"]] + [money(c["usd"]) for c in report["jobs"]]
    values += [money(c["saving_usd"]) for c in report["jobs"]] + [money(report["total"]["usd"])]
    assert_whole(out, values)


@pytest.mark.parametrize("columns", [80, 60])
def test_simulate_shows_every_figure_whole(runner_home, columns):
    from runner.simulate import build_scenario, simulate

    out = run(runner_home, columns, "simulate", "--gpu", "rtx3090", "--hours", "25", "--mtbf-hours", "2",
              "--checkpoint-seconds", "30", "--restart-minutes", "5", "--trials", "100", "--seed", "3")
    scenario, _notes = build_scenario(None, None, "rtx3090", 25, 2, 30, 5, 60.0, 1.0, None, None)
    values = []
    for r in simulate(scenario, trials=100, seed=3):  # the same figures, in this process
        values += [f"${r.usd.mean:.2f}", f"{r.wall_h.mean:.1f}", f"{r.uptime_h.mean:.1f}", f"{r.preemptions.mean:.1f}",
                   f"{r.lost_h.mean:.2f}", f"{r.restart_h.mean:.2f}", f"{r.checkpoint_h.mean:.2f}"]
    assert_whole(out, values, ["spot, auto (10.6 min)", "spot, every 60 min", "on-demand", "relaunch h", "checkpoint h"])
