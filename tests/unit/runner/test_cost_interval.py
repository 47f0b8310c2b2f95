"""Young/Daly's checkpoint interval and the expected cost of preemptions (pure arithmetic)."""

from __future__ import annotations

import math

import pytest

from runner import interval as iv


def test_daly_is_young_for_cheap_checkpoints_and_shorter_for_dear_ones():
    assert iv.young_seconds(30, 7200) == pytest.approx(math.sqrt(2 * 30 * 7200))  # 657 s
    assert iv.daly_seconds(0.01, 7200) == pytest.approx(iv.young_seconds(0.01, 7200), rel=1e-3)
    assert iv.daly_seconds(30, 7200) == pytest.approx(637.4, abs=0.5)
    assert iv.daly_seconds(10_000, 3600) == 3600  # C >= 2M: checkpointing cannot pay, run the mean life


@pytest.mark.parametrize(("checkpoint_s", "mtbf_h"), [(30, 2), (5, 1), (120, 6), (2, 0.5)])
def test_daly_interval_minimises_the_expected_machine_time(checkpoint_s, mtbf_h):
    """The formula's interval is within 0.1% of the best interval found by brute force."""
    best = min(iv.expected(25, m / 10, checkpoint_s, mtbf_h, 5).uptime_h for m in range(5, 3000))
    chosen = iv.expected(25, iv.daly_seconds(checkpoint_s, mtbf_h * 3600) / 60, checkpoint_s, mtbf_h, 5).uptime_h
    assert chosen <= best * 1.001


def test_optimal_minutes_is_bounded():
    assert iv.optimal_minutes(30, 7200) == pytest.approx(637.4 / 60, abs=0.01)
    assert iv.optimal_minutes(0.001, 7200) == iv.MIN_MINUTES  # a tiny stall: still wait for the write
    assert iv.optimal_minutes(30, math.inf) == iv.MAX_MINUTES  # no preemptions: crashes still happen


def test_expectation_adds_up():
    e = iv.expected(25, 60, 30, 2, 5)
    # Wald: preemptions per machine hour times machine hours.
    assert e.preemptions == pytest.approx(e.uptime_h / 2)
    assert e.uptime_h == pytest.approx(25 + e.lost_h + e.restart_h + e.checkpoint_h + e.boot_h)
    assert e.checkpoint_h == pytest.approx(24 * 30 / 3600)  # 24 periodic checkpoints; the end needs none
    no_preemption = iv.expected(25, 60, 30, math.inf, 5)
    assert no_preemption.uptime_h == pytest.approx(25 + 24 * 30 / 3600 + 5 / 60)
    assert (no_preemption.preemptions, no_preemption.lost_h) == (0, 0)


def test_a_single_stretch_matches_the_textbook_formula():
    """One stretch of s hours, no boot: (e^(s/M) - 1) M hours expected."""
    e = iv.expected(1.0, 120, 0.0001, 2.0, 0.0)
    assert e.uptime_h == pytest.approx((math.exp(0.5) - 1) * 2.0)
    assert e.lost_h == pytest.approx((math.exp(0.5) - 1) * 2.0 - 1.0)


def test_every_minutes_auto_in_a_job_file(monkeypatch, tmp_path):
    """The trainer's schema takes ``auto``, resolved where the trainer runs: the interval the runner
    passed, else 10 minutes; anything else that is not a number is refused with the file, line and field."""
    from runner.spec import load_job
    from tests.fixtures.jobs import make_job
    from trainer.config import ENV_AUTO_MINUTES, Checkpoint
    from trainer.jobfile import JobFileError

    monkeypatch.setenv(ENV_AUTO_MINUTES, "7.250")
    auto = Checkpoint(every_minutes="auto")
    assert auto.every_minutes == "auto"  # the parsed file keeps what it said: resolved where it runs
    assert auto.minutes() == 7.25
    assert auto.minutes({}) == 10.0  # started by hand: nothing passed
    assert Checkpoint(every_minutes=3).minutes() == 3.0  # a number in the file wins over the variable
    with pytest.raises(ValueError, match="is not a number of minutes"):
        auto.minutes({ENV_AUTO_MINUTES: "soon"})
    monkeypatch.delenv(ENV_AUTO_MINUTES)

    job = load_job(make_job(tmp_path / "a", {"train": {"checkpoint": {"every_minutes": "auto"}}}))
    assert job.spec.train.checkpoint.every_minutes == "auto"  # the runner keeps what the file said
    assert type(job.spec).from_record(job.spec.record()).train.checkpoint.every_minutes == "auto"  # and so does the state
    bad = make_job(tmp_path / "b", {"train": {"checkpoint": {"every_minutes": "often"}}})
    with pytest.raises(JobFileError) as e:
        load_job(bad)
    assert "train.checkpoint.every_minutes" in str(e.value) and "a number of minutes or auto" in str(e.value)
