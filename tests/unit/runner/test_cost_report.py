"""The cost report over a real state file: billed hours and dollars to the cent, the saving against
on-demand, idle time, disks, preemptions and the work they threw away; a state file written by the
first version of the runner opens unchanged; the plot is a PNG a person can read."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from runner import interval as iv
from runner import state as st
from runner.cost import job_cost, parse_since, report, to_csv
from runner.state import State
from tests.fixtures.jobs import ROOT, job_spec, trainer_env

T0 = 1_790_000_000.0  # a fixed start, so every figure below is exact
H = 3600.0
SPEC = {"name": "brad", "backend": "runpod", "resources": {"gpu": "rtx3090", "spot": True},
        "train": {"checkpoint": {"every_minutes": "auto", "every_steps": 100}}}


def attempt(state: State, job_id: str, *, start: float, hours: float, outcome: str, steps: tuple[int, int, int],
            idle_h: float = 0.1, spot: bool = True, storage: float = 0.0) -> st.AttemptRow:
    """One attempt on an RTX 3090 billed from ``start`` for ``hours``: (start step, step reached,
    last checkpoint step); it trains at 9 s a step after ``idle_h`` hours of boot and loading."""
    a = state.add_attempt(job_id, backend="runpod", gpu="rtx3090", gpu_count=1, spot=spot, start_step=steps[0])
    state.attempt_started(a, {"pod": a.id}, gpu="rtx3090", spot=spot, rate_per_hour=0.34 if spot else 0.44,
                          on_demand_rate_per_hour=0.44, storage_rate_per_hour=storage)
    train_started = start + idle_h * H
    state.attempt_ended(state.attempt(a.id), outcome=outcome, exit_code=None, detail="", end_step=steps[1],
                        last_checkpoint_step=steps[2], train_started=train_started,
                        train_ended=train_started + (steps[1] - steps[0]) * 9.0, checkpoint_seconds=2.0, checkpoints=5)
    state.db.execute("UPDATE billing_segments SET started = ?, ended = ? WHERE attempt_id = ?", (start, start + hours * H, a.id))
    state.db.execute("UPDATE attempts SET started = ?, ended = ? WHERE id = ?", (start, start + hours * H, a.id))
    return state.attempt(a.id)


@pytest.fixture
def three_attempts(runner_home) -> tuple[State, st.JobRow]:
    """Preempted after 2 h at step 700 (checkpoint at 600), again after 3 h at step 1,600 (checkpoint
    at 1,500), then done after 1.5 h at step 2,000."""
    state = State.open()
    job = state.create_job(id="brad-1", name="brad", job_file="/j.yaml", job_sha256="0", spec=job_spec(SPEC), workdir="/",
                           backend="runpod", run_uri="s3://b/brad-1")
    attempt(state, job.id, start=T0, hours=2, outcome="interrupted", steps=(0, 700, 600))
    attempt(state, job.id, start=T0 + 2.1 * H, hours=3, outcome="interrupted", steps=(600, 1600, 1500))
    attempt(state, job.id, start=T0 + 5.2 * H, hours=1.5, outcome="done", steps=(1500, 2000, 2000))
    state.update_job(job.id, step=2000, max_steps=2000, preemptions=2, state="done", created=T0)
    return state, state.job(job.id)


def test_report_to_the_cent(three_attempts):
    state, job = three_attempts
    c = job_cost(state, job, now=T0 + 10 * H, advice=True)
    assert (c.gpu_hours, c.attempts, c.preemptions, c.steps) == (6.5, 3, 2, 2000)
    assert round(c.usd, 2) == 2.21 and round(c.on_demand_usd, 2) == 2.86 and round(c.saving_usd, 2) == 0.65
    assert c.saving_fraction == pytest.approx(0.65 / 2.86)
    # 100 steps after each of the two last checkpoints, at 9 s a step, were trained again: half an hour.
    assert c.lost_steps == 200 and c.lost_hours == pytest.approx(0.5) and c.lost_usd == pytest.approx(0.5 * 0.34)
    # Billed but not training (boot, loading, after the last heartbeat): 6.5 h less 2,200 steps of 9 s.
    assert c.idle_hours == pytest.approx(1.0) and c.idle_usd == pytest.approx(0.34)
    assert c.usd_per_1k_steps == pytest.approx(2.21 / 2)
    assert (c.capacity, c.gpu, c.billed_by) == ("spot", "rtx3090", "runner")
    assert c.interval.in_use == "auto or every 100 steps" and c.interval.checkpoint_seconds == 2.0
    # Two preemptions in 6.5 spot hours, with the prior of one in four hours: MTBF (6.5 + 4) / 3.
    assert c.interval.mtbf_hours == pytest.approx(3.5)
    assert c.interval.recommended_minutes == pytest.approx(iv.daly_seconds(2.0, 3.5 * H) / 60)  # 3.7 min


def test_disks_and_the_providers_own_bill(three_attempts):
    state, job = three_attempts
    state.db.execute("UPDATE billing_segments SET storage_rate_per_hour = 0.01")
    c = job_cost(state, job, now=T0 + 10 * H)
    assert c.storage_usd == pytest.approx(0.065) and c.usd == pytest.approx(2.275)
    assert c.on_demand_usd == pytest.approx(2.925) and c.saving_usd == pytest.approx(0.65)  # disks cost the same
    # The provider's record for attempt 1: a little longer than the runner saw, $0.7123 with its disk.
    state.settle_segment("brad-1-1", started=T0 - 60, ended=T0 + 2 * H + 60, usd=0.7123)
    (seg, *_rest) = state.segments(job.id)
    assert (seg.source, seg.rate_source, seg.provider_usd, seg.provider_storage_usd) == ("provider", "provider", 0.7123, 0.0)
    assert seg.rate_per_hour == pytest.approx(0.7123 / (2 + 120 / H))  # the rate it charged, from its record
    c = job_cost(state, job, now=T0 + 10 * H)
    assert c.usd == pytest.approx(0.7123 + 4.5 * (0.34 + 0.01))
    assert c.gpu_hours == pytest.approx(6.5 + 120 / H) and c.billed_by == "mixed"
    assert c.on_demand_usd == pytest.approx((6.5 + 120 / H) * 0.44 + 4.5 * 0.01)
    assert state.spent(job.id) == pytest.approx(c.usd)  # the budget counts what the report counts


def test_since_counts_only_what_was_billed_from_then_on(three_attempts):
    state, job = three_attempts
    c = job_cost(state, job, now=T0 + 10 * H, since=T0 + 3.6 * H)  # the middle of attempt 2
    assert c.gpu_hours == pytest.approx(1.5 + 1.5) and c.usd == pytest.approx(3.0 * 0.34)
    assert c.preemptions == 1 and c.lost_steps == 100
    rep = report(state, [job], since=T0 + 7 * H, now=T0 + 10 * H)  # after the job ended
    assert rep.jobs == []  # nothing billed after it ended
    assert parse_since("2026-11-20") < parse_since("2026-11-20T12:00")
    assert parse_since("2d", now=1000000.0) == 1000000.0 - 2 * 86400
    with pytest.raises(ValueError, match="expected a date"):
        parse_since("last tuesday")


def test_csv_and_json_from_the_command_line(three_attempts, runner_home):
    state, job = three_attempts
    rep = report(state, [job], now=T0 + 10 * H)
    rows = list(csv.DictReader(io.StringIO(to_csv(rep))))
    assert [r["job_id"] for r in rows] == ["brad-1", "total"]
    assert (rows[0]["usd"], rows[0]["saving_usd"], rows[0]["lost_steps"]) == ("2.21", "0.65", "200")
    assert rows[1]["preemptions"] == "2" and rows[1]["usd_per_1k_steps"] == "1.105"

    env = trainer_env(RUNNER_HOME=str(runner_home))
    run = lambda *a: subprocess.run([sys.executable, "-m", "runner", "cost", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=ROOT, env=env, timeout=60)
    out = json.loads(run("--json").stdout)
    assert out["total"]["usd"] == pytest.approx(2.21) and out["total"]["saving_usd"] == pytest.approx(0.65)
    assert out["jobs"][0]["lost_steps"] == 200 and out["jobs"][0]["interval"]["checkpoint_seconds"] == 2.0
    card = run("brad")
    assert card.returncode == 0, card.stderr
    assert "$2.21* for 6.50 GPU hours" in card.stdout and "spot saved $0.65 (23%)" in card.stdout
    assert "2: 200 steps trained again, 0.50 h, $0.17" in card.stdout and "Young/Daly: every 3.7 min" in card.stdout
    assert "threw away 200 steps" in card.stdout
    assert run("--since", "yesterday-ish").returncode == 2

    # Two jobs: a table, narrower on an 80-column terminal; no figure is ever cut short.
    other = state.create_job(id="brad-2", name="brad", job_file="/j.yaml", job_sha256="0", spec=job_spec(SPEC), workdir="/",
                             backend="runpod", run_uri="s3://b/brad-2")
    attempt(state, other.id, start=T0 + 8 * H, hours=1, outcome="done", steps=(0, 300, 300), spot=False)
    for columns, header in (("80", "job billed saved preempted work lost"),
                            ("150", "job GPU GPU h billed on-demand saved idle h preempted work lost $/1k steps Young/Daly")):
        out = subprocess.run([sys.executable, "-m", "runner", "cost"], capture_output=True, text=True, cwd=ROOT,
                             env=dict(env, COLUMNS=columns), timeout=60).stdout
        lines = [" ".join(line.split()) for line in out.splitlines()]
        assert header in lines and any(line.startswith("total ") for line in lines), out
        assert " $2.65 " in out and "…" not in out, out


def test_a_state_file_from_the_first_version_opens_and_keeps_its_records(runner_home: Path):
    """Version 1 had no columns for storage, the provider's bill or what the trainer measured."""
    runner_home.mkdir(parents=True)
    db = sqlite3.connect(runner_home / "state.db")
    db.executescript(st._SCHEMA)  # the tables as version 1 created them (later columns are added)
    db.execute("INSERT INTO jobs (id, name, job_file, job_sha256, spec_json, workdir, backend, run_uri, state, created,"
               " updated) VALUES ('old-1', 'old', '/j.yaml', '0', ?, '/', 'runpod', '/r', 'done', 1, 1)",
               (job_spec({"name": "old", "backend": "runpod"}).record(),))
    db.execute("INSERT INTO attempts (id, job_id, number, backend, state, gpu, spot, created, started, ended, outcome,"
               " start_step, end_step) VALUES ('old-1-1', 'old-1', 1, 'runpod', 'ended', 'rtx3090', 1, 1, 1, 7201,"
               " 'done', 0, 50)")
    db.execute("INSERT INTO billing_segments (job_id, attempt_id, gpu, gpu_count, spot, rate_per_hour,"
               " on_demand_rate_per_hour, started, ended, end_reason) VALUES ('old-1', 'old-1-1', 'rtx3090', 1, 1,"
               " 0.34, 0.44, 1, 7201, 'done')")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()

    state = State.open()
    assert state.db.execute("PRAGMA user_version").fetchone()[0] == st.SCHEMA_VERSION
    (seg,) = state.segments("old-1")
    assert (seg.storage_rate_per_hour, seg.rate_source, seg.provider_usd, seg.train_seconds) == (0.0, "catalog", None, None)
    assert state.attempt("old-1-1").last_checkpoint_step is None
    c = job_cost(state, state.job("old-1"))
    assert round(c.usd, 2) == 0.68 and round(c.saving_usd, 2) == 0.20 and c.lost_steps == 0
    state.close()
    State.open().close()  # opening again changes nothing


def test_the_plot_is_a_png_a_person_can_read(three_attempts, tmp_path: Path):
    from matplotlib.image import imread

    from runner.plot import curve, plot_costs

    state, job = three_attempts
    c = curve(state, job, now=T0 + 10 * H)
    assert c.spot[-1] == (pytest.approx(6.7), pytest.approx(2.21))  # hours since the first launch, dollars
    assert c.on_demand[-1][1] == pytest.approx(2.86)
    assert [round(p[0], 1) for p in c.preemptions] == [2.0, 5.1] and [round(p[0], 1) for p in c.relaunches] == [2.1, 5.2]
    path = plot_costs([c], tmp_path / "cost.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1200, 720)
    pixels = imread(path)
    assert pixels.shape[:2] == (720, 1200)
    # Not blank: lines, markers and text in several colours (the two line colours, red and green markers).
    colours = {tuple((p * 255).astype(int)[:3]) for p in pixels.reshape(-1, pixels.shape[-1])[::7]}
    assert len(colours) > 50
    assert any(r > 200 and g < 80 and b < 80 for r, g, b in colours)  # the red preemption markers


def test_the_time_axis_reads_in_a_unit_that_suits_the_job(runner_home):
    """A job of seconds reads in seconds, one of hours in hours; ticks are distinct round numbers."""
    import matplotlib.pyplot as plt

    from runner.plot import Curve, cost_figure

    for span_h, unit in ((20 / H, "seconds"), (0.5, "minutes"), (6.7, "hours")):
        c = Curve("j", [(0, 0), (span_h, 1.0)], [(0, 0), (span_h, 1.3)], [(span_h / 2, 0.5)], ["10 steps lost ($0.05)"],
                  [(span_h / 2, 0.5)], T0)
        fig = cost_figure([c])
        try:
            fig.canvas.draw()
            (ax,) = fig.axes
            assert ax.get_xlabel() == f"time since the job's first launch ({unit})"
            assert ax.get_ylabel() == "cumulative cost (USD)"
            ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
            assert len(ticks) >= 4 and len(set(ticks)) == len(ticks), ticks
            assert {"$0.00", "$1.00"} <= {t.get_text() for t in ax.get_yticklabels()}
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert legend == ["j: billed ($1.00)", "j: same hours on-demand ($1.30)", "preemption (machine taken away)",
                              "relaunch (resumes from the last checkpoint)"]
        finally:
            plt.close(fig)
