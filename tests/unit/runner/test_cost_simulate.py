"""The simulator at the seeds' prices: a 25-hour job on an RTX 3090, spot $0.34/h against $0.44/h
on-demand, one preemption every 2 hours. Seeded, and asserted on means over many trials (with
their standard errors) and against the exact expectation, not on one lucky draw."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runner import interval as iv
from runner.simulate import Scenario, paired_difference, parse_trace, replay, simulate, summary
from tests.fixtures.jobs import ROOT, trainer_env

SEEDS = Scenario(work_hours=25, spot_rate=0.34, on_demand_rate=0.44, checkpoint_seconds=30, restart_minutes=5,
                 mtbf_hours=2, fixed_minutes=60, gpu="rtx3090")
TRIALS = 3000


@pytest.fixture(scope="module")
def results():
    return simulate(SEEDS, trials=TRIALS, seed=7)


def test_monte_carlo_agrees_with_the_exact_expectation(results):
    for r in results:
        assert r.trials == TRIALS
        # Within 4 standard errors of the closed form: the simulator and the formula model the same thing.
        assert abs(r.usd.mean - r.expected_usd) <= 4 * r.usd.stderr + 1e-9, r.strategy.name
        assert abs(r.lost_h.mean - r.expected.lost_h) <= 4 * r.lost_h.stderr + 1e-9, r.strategy.name
        assert abs(r.preemptions.mean - r.expected.preemptions) <= 4 * r.preemptions.stderr + 1e-9, r.strategy.name


def test_auto_interval_beats_a_fixed_hour_and_spot_beats_on_demand(results):
    auto, fixed, on_demand = results
    assert auto.strategy.interval_minutes == pytest.approx(iv.daly_seconds(30, 7200) / 60)  # 10.6 min
    assert fixed.strategy.interval_minutes == 60
    # Paired over the same preemption times: the auto interval saves money, far beyond the noise.
    saving = paired_difference(fixed, auto)
    assert saving.mean > 1.5 and saving.mean > 20 * saving.stderr
    assert auto.lost_h.mean < fixed.lost_h.mean / 4
    # Exact expectations, to the cent: spot with the auto interval $9.75, with a fixed hour $11.64,
    # on-demand $11.12 (25 h + 24 checkpoints of 30 s + a 5-minute boot, at $0.44).
    assert auto.expected_usd == pytest.approx(9.75, abs=0.005)
    assert fixed.expected_usd == pytest.approx(11.64, abs=0.005)
    assert on_demand.expected_usd == pytest.approx((25 + 24 * 30 / 3600 + 5 / 60) * 0.44)
    assert on_demand.usd.stderr == 0 and on_demand.preemptions.mean == 0
    assert auto.usd.mean < on_demand.usd.mean < fixed.usd.mean


def test_the_summary_says_how_much_cheaper_spot_is_and_how_much_work_was_lost(results):
    auto, fixed, on_demand = results
    text = "\n".join(summary(SEEDS, results))
    assert f"is expected to cost ${auto.usd.mean:.2f}, 12% less than on-demand (${on_demand.usd.mean:.2f})" in text
    assert f"throw away {auto.lost_h.mean:.2f} h of work (${auto.lost_usd.mean:.2f})" in text
    assert f"With a fixed 60-min interval instead: ${fixed.usd.mean:.2f} (5% more than on-demand)" in text
    assert "The auto interval saves $1.8" in text or "The auto interval saves $1.9" in text


def test_same_seed_same_figures_and_a_hand_checked_trace():
    a, b = simulate(SEEDS, trials=50, seed=3), simulate(SEEDS, trials=50, seed=3)
    assert [r.usd.mean for r in a] == [r.usd.mean for r in b]
    # 3 h of work, hourly checkpoints that cost nothing, no boot; preempted at 1.5 h of machine time:
    # the half hour after the first checkpoint is lost and trained again.
    t = replay(3.0, 60, 0.0, 0.0, iter([1.5]), rate=0.34)
    assert (t.uptime_h, t.lost_h, t.preemptions) == (3.5, 0.5, 1)
    assert t.usd == pytest.approx(3.5 * 0.34)
    # A preemption during the first 6-minute boot throws that boot away, not work; one during training
    # costs the work since the last checkpoint and a boot (a restart).
    t = replay(1.0, 60, 0.0, 6.0, iter([0.05]), rate=1.0, wait_min=3.0)
    assert (t.restart_h, t.lost_h, t.preemptions) == (0, 0, 1) and t.uptime_h == pytest.approx(0.05 + 0.1 + 1.0)
    assert t.wall_h == pytest.approx(t.uptime_h + 0.05)
    t = replay(1.0, 60, 0.0, 6.0, iter([0.5]), rate=1.0)
    assert (t.restart_h, t.lost_h) == (pytest.approx(0.1), pytest.approx(0.4))


def test_traces_in_the_usual_shapes():
    assert parse_trace("[2.5, 1.0]") == (1.0, 2.5)
    assert parse_trace("1.0\n2.5  # second\n\n4") == (1.0, 2.5, 4.0)
    assert parse_trace("1,2,3") == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError):
        parse_trace("-1")


def test_cli_prints_the_verdict_and_json(runner_home, tmp_path):
    env = trainer_env(RUNNER_HOME=str(runner_home))
    args = [sys.executable, "-m", "runner", "simulate", "--gpu", "rtx3090", "--hours", "25", "--mtbf-hours", "2",
            "--checkpoint-seconds", "30", "--restart-minutes", "5", "--trials", "400", "--seed", "1"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "less than on-demand" in done.stdout and "h of work" in done.stdout
    assert "$0.34/h spot, $0.44/h on-demand" in done.stdout
    as_json = subprocess.run(args + ["--json"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    data = json.loads(as_json.stdout)
    auto, fixed, on_demand = data["results"]
    assert auto["usd"] < on_demand["usd"] < fixed["usd"]
    trace = tmp_path / "trace.txt"
    trace.write_text("1.5\n3.0\n")
    replayed = subprocess.run([sys.executable, "-m", "runner", "simulate", "--hours", "4", "--trace", str(trace),
                               "--checkpoint-seconds", "30", "--restart-minutes", "5", "--json"],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    data = json.loads(replayed.stdout)
    assert [r["preemptions"] for r in data["results"]] == [2, 2, 0] and data["results"][0]["trials"] == 1


def test_a_pipeline_job_file_is_simulated_as_its_stages_one_after_the_other(runner_home):
    """`simulate jobs/brad_finetune.yaml` used to crash (a pipeline has no train: of its own)."""
    from runner.cost import estimate_stages
    from runner.spec import load_job

    stages = estimate_stages(load_job(ROOT / "jobs" / "brad_finetune.yaml"))
    assert [name for name, _est in stages] == ["vqvae", "style_encoder", "hybrid"]
    done = subprocess.run([sys.executable, "-m", "runner", "simulate", "jobs/brad_finetune.yaml", "--trials", "50",
                           "--json"], capture_output=True, text=True, cwd=ROOT,
                          env=trainer_env(RUNNER_HOME=str(runner_home)), timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["scenario"]["work_hours"] == pytest.approx(sum(est.hours for _name, est in stages))
    assert data["scenario"]["gpu"] == "rtx3090"
    notes = "\n".join(data["assumptions"])
    assert "in 3 stages, one after the other" in notes
    assert all(f"stage {name}: {est.hours:.2f} h" in notes for name, est in stages)
