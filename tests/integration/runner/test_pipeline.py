"""A job file with stages: each stage a run of its own, started when the one before it is done, with
its job variables substituted the same way by the runner and by the trainer."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.fixtures.jobs import QUICKSTART, ROOT

pytestmark = pytest.mark.integration


def pipeline_file(folder: Path) -> Path:
    """Two quickstart-sized stages; the second starts from the first's best.pt. Its step count and the
    data are job variables."""
    train = yaml.safe_load(QUICKSTART.read_text())["train"]
    train["data"]["train"] = "${DATA}"
    train["max_steps"] = "${STEPS}"
    train["eval"] = {"every_steps": 10, "batches": 2}
    train["checkpoint"] = {"every_steps": 10, "keep_last": 2}
    train["logging"]["progress_bar"] = False
    doc = {"name": "two-stage", "envs": {"STEPS": 400, "DATA": str(ROOT / "jobs" / "data" / "python_reference.txt")},
           "stages": {"first": {"train": train}, "second": {"init_from": "first", "train": train}}}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def jobs_of(home: Path) -> list[dict]:
    db = sqlite3.connect(home / "state.db")
    db.row_factory = sqlite3.Row
    rows = [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY created, rowid")]
    for row in rows:
        row["attempts"] = [dict(a) for a in db.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY number",
                                                      (row["id"],))]
    db.close()
    return rows


def test_a_pipeline_runs_its_stages_in_order_and_a_second_submit_keeps_what_is_done(runner, tmp_path: Path):
    job = pipeline_file(tmp_path)
    done = runner.run("submit", str(job), "--env", "STEPS=20", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = jobs_of(runner.home)
    assert (first["stage"], second["stage"]) == ("first", "second")
    assert first["pipeline"] == second["pipeline"] and first["state"] == second["state"] == "done"
    # Each stage is its own run, and trained its own section with the value given on the command line.
    for row in (first, second):
        status = json.loads((Path(row["run_uri"]) / "status.json").read_text())
        assert status["step"] == status["max_steps"] == 20, status
        assert Path(row["run_uri"]).parent.name == row["pipeline"]
    # The second stage started only once the first had ended, and was told where its input is.
    assert second["attempts"][0]["created"] >= first["attempts"][-1]["ended"]
    assert json.loads(second["inputs_json"]) == {"first": f"{first['run_uri']}/checkpoints/best.pt"}

    # The pipeline as one thing: its stages in order and what they cost together.
    shown = runner.run("status", first["pipeline"], "--json")
    assert shown.returncode == 0, shown.stderr
    pipeline = json.loads(shown.stdout)
    assert pipeline["state"] == "done" and [s["stage"] for s in pipeline["stages"]] == ["first", "second"]
    cost = json.loads(runner.run("cost", first["pipeline"], "--json").stdout)
    assert [c["job_id"] for c in cost["jobs"]] == [first["id"], second["id"]]
    assert cost["total"]["attempts"] == 2 and cost["total"]["steps"] == 40
    text = runner.run("status", "two-stage").stdout  # by the job file's name too
    assert f"Pipeline {first['pipeline']}: done" in text and "2 stages (first done, second done)" in text

    again = runner.run("submit", str(job), "--env", "STEPS=20", timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is done: every stage finished" in again.stdout
    assert len(jobs_of(runner.home)) == 2  # nothing recorded, nothing run again


def test_job_variables_misspelled_or_undeclared_are_refused_with_the_line(runner, tmp_path: Path):
    job = pipeline_file(tmp_path)
    typo = runner.run("submit", str(job), "--env", "STESP=20", "--dry-run")
    assert typo.returncode == 2 and "--env STESP" in typo.stderr and "declared: DATA, STEPS" in typo.stderr
    text = job.read_text().replace("${DATA}", "${DATASET}", 1)
    job.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "${DATASET}" in t)
    undeclared = runner.run("submit", str(job), "--dry-run")
    assert undeclared.returncode == 2 and f"pipeline.yaml:{line}: ${{DATASET}} is not declared under envs:" in undeclared.stderr
    assert not (runner.home / "state.db").exists()


def test_the_dry_run_of_a_pipeline_plans_every_stage_and_the_total(runner, tmp_path: Path):
    job = pipeline_file(tmp_path)
    plan = runner.run("submit", str(job), "--dry-run", "--json", "--env", "STEPS=1000")
    assert plan.returncode == 0, plan.stderr
    doc = json.loads(plan.stdout)
    assert [s["stage"] for s in doc["stages"]] == ["first", "second"]
    assert [s["steps"] for s in doc["stages"]] == [1000, 1000]
    assert doc["estimated_hours"] == pytest.approx(sum(s["estimated_hours"] for s in doc["stages"]))
    text = runner.run("submit", str(job), "--dry-run")
    assert "Stage 1 of 2: first" in text.stdout and "Stage 2 of 2: second (from first ← first)" in text.stdout
    assert "Pipeline two-stage: 2 stages" in text.stdout
