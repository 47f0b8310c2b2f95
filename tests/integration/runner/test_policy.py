"""What the supervisor does about failures, budgets and cancellation, with real trainers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from runner import proc
from tests.fixtures.jobs import make_job, wait_for

LONG = {"train": {"max_steps": 100000, "threads": 1, "logging": {"heartbeat_seconds": 0.2, "every_steps": 5},
                  "checkpoint": {"every_steps": 10}}}


def test_cancel_stops_with_an_emergency_checkpoint_and_secrets_stay_out_of_the_state(runner, tmp_path: Path):
    secret = "cancel-test-secret-5f0c2d9e"
    job = make_job(tmp_path / "job", {**LONG, "secrets": ["RUNNER_TEST_SECRET"]})
    env = dict(runner.env, RUNNER_TEST_SECRET=secret, RUNNER_TEST_NOT_FORWARDED="stays-in-the-shell")
    detached = runner.run("submit", str(job), "--detach", "--json", env=env)
    assert detached.returncode == 0, detached.stderr
    job_id = json.loads(detached.stdout)["id"]
    watch = runner.start("watch", env=env)
    wait_for(lambda: runner.running_step(job_id, 1, 20), timeout=300, what="attempt 1 at step 20")

    pid, ident = runner.trainer(f"{job_id}-1")
    trainer_env = dict(line.split("=", 1) for line in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in line)
    assert trainer_env["RUNNER_TEST_SECRET"] == secret
    assert trainer_env["RUNNER_ATTEMPT_ID"] == f"{job_id}-1"
    assert "RUNNER_TEST_NOT_FORWARDED" not in trainer_env

    cancel = runner.run("cancel", job_id, "--json", timeout=300)
    assert cancel.returncode == 0, cancel.stderr
    record = json.loads(cancel.stdout)
    assert record["state"] == "cancelled"
    assert not proc.is_alive(pid, ident)
    full = runner.job(job_id)
    (attempt,) = full["attempts"]
    assert (attempt["outcome"], attempt["exit_code"]) == ("stopped", 75)
    assert not proc.is_alive(attempt["handle"]["pid"], attempt["handle"]["ident"])
    assert (Path(full["run_uri"]) / "checkpoints" / "latest.pt").exists()
    assert watch.wait(timeout=120) == 1, runner.output(watch)  # its job ended, and not done
    assert "cancelled" in runner.output(watch)

    found = subprocess.run(["grep", "-rl", secret, str(runner.home)], capture_output=True, text=True)
    assert found.stdout == "", f"the secret was written to: {found.stdout}"


def test_a_crash_is_retried_and_the_job_still_ends_done(runner, tmp_path: Path):
    marker = tmp_path / "crashed-once"
    recipe = {"recipe": "tests.fixtures.crash_once:build", "n_layer": None, "n_head": None, "n_embd": None,
              "dropout": None, "options": {"crash_at_call": 5, "model": {"n_layer": 1, "n_head": 2, "n_embd": 32}}}
    job = make_job(tmp_path / "job", {"train": {"model": recipe, "max_steps": 40, "threads": 1},
                                      "env": {"CRASH_ONCE_MARKER": str(marker)},
                                      "retry": {"max_failures": 2, "backoff_seconds": 0.5}})
    done = runner.run("submit", str(job), "--json", timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "done" and marker.exists()
    assert [(a["outcome"], a["exit_code"]) for a in record["attempts"]] == [("failed", 1), ("done", 0)]
    assert "simulated transient crash" in record["attempts"][0]["detail"]
    assert record["failures"] == 1 and record["preemptions"] == 0
    assert "retry 1 of 2 in 0s" in " ".join(e["message"] for e in record["events"])


def test_failures_are_retried_a_bounded_number_of_times(runner, tmp_path: Path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "always_crash.py").write_text(
        "def build(cfg, options):\n    raise RuntimeError('simulated crash in the recipe')\n")
    custom = {"recipe": "always_crash:build", "n_layer": None, "n_head": None, "n_embd": None, "dropout": None}
    job = make_job(tmp_path / "job", {"train": {"model": custom}, "retry": {"max_failures": 1, "backoff_seconds": 0.2}})
    done = runner.run("submit", str(job), "--json", timeout=600)
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "failed"
    assert [(a["outcome"], a["exit_code"]) for a in record["attempts"]] == [("failed", 1), ("failed", 1)]
    assert "more than retry.max_failures (1)" in record["reason"]
    assert "simulated crash in the recipe" in record["reason"]
    assert record["failures"] == 2


def test_a_failure_a_rerun_cannot_fix_is_not_retried(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", {"train": {"optimizer": {"lr": 1.0e+30}, "grad_clip": None, "threads": 1,
                                                "guard": {"max_nonfinite_in_a_row": 1}}})
    done = runner.run("submit", str(job), "--json", timeout=600)
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "failed"
    assert [(a["outcome"], a["exit_code"]) for a in record["attempts"]] == [("failed_permanently", 4)]
    assert "training diverged" in record["reason"] and "a relaunch cannot fix that" in record["reason"]


def test_budget_reached_stops_the_job_with_an_emergency_checkpoint(runner, tmp_path: Path):
    job = make_job(tmp_path / "job", {**LONG, "budget": {"max_usd": 5}})
    env = dict(runner.env, RUNNER_LOCAL_USD_PER_HOUR="3600")  # a dollar a second
    done = runner.run("submit", str(job), "--json", env=env, timeout=600)
    assert done.returncode == 1, done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "over_budget", record["reason"]
    assert "raise budget.max_usd" in record["reason"]
    (attempt,) = record["attempts"]
    assert (attempt["outcome"], attempt["exit_code"]) == ("stopped", 75)
    assert record["cost"]["usd"] >= 5
    kinds = [e["kind"] for e in record["events"]]
    assert kinds.index("budget_warning") < kinds.index("budget_reached") < kinds.index("stopped")
    assert not proc.is_alive(attempt["handle"]["pid"], attempt["handle"]["ident"])
    assert os.listdir(runner.home / "attempts") == [attempt["id"]]
