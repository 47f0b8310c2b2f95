"""`runner logs` of a RunPod job shows what happened on this machine (each attempt's launch: what RunPod
refused, which pod it got) without any RunPod key, then asks RunPod for the pods' own output when a key
is set; without one it says what is missing after what it could show."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.runpod.conftest import write_job

TINY = {"train": {"max_steps": 12, "eval": {"every_steps": 6}, "checkpoint": {"every_steps": 6}},
        "retry": {"fallback_to_on_demand_after": 2}}


def test_logs_show_the_launches_without_a_key_and_the_pod_output_with_one(runner, emulator, s3_bucket,
                                                                          runpod_project):
    write_job(runpod_project, s3_bucket, TINY)
    emulator.refuse_spot("Spot pods are no longer offered in this region.")
    done = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    [job_id] = runner.job_ids()
    [pod] = emulator.pods.values()

    without_key = {k: v for k, v in runner.env.items() if k != "RUNPOD_API_KEY"}
    logs = subprocess.run([sys.executable, "-m", "runner", "logs", job_id], capture_output=True, text=True,
                          cwd=runner.project, env=without_key, timeout=120)
    assert logs.returncode == 0, logs.stdout + logs.stderr
    out = logs.stdout
    assert f"── attempt 1 ({job_id}-1) ──" in out and f"── attempt 2 ({job_id}-2) ──" in out
    first, second = out.split(f"── attempt 2 ({job_id}-2) ──")
    assert "attempt 1: launching on the runpod backend (rtx3090, spot)" in first
    assert "Spot pods are no longer offered in this region." in first  # RunPod's refusal, read from this machine
    assert "attempt 2: launching on the runpod backend (rtx3090, on-demand)" in second
    assert f"launched: RunPod pod {pod.id}" in second
    assert "trainer starting" not in out  # the pod's own output needs RunPod's API
    assert logs.stderr.strip() == ("The output of attempt 2 on runpod is not shown: the runpod backend needs a RunPod "
                                   "API key: export RUNPOD_API_KEY (RunPod console → Settings → API Keys) and run the "
                                   "command again"), logs.stderr

    with_key = runner.run("logs", job_id, timeout=120)
    assert with_key.returncode == 0, with_key.stderr
    # With a key the pod is asked for its output (a terminated pod's is gone: RunPod says so, and where the
    # trainer's own log is).
    assert f"launched: RunPod pod {pod.id}" in with_key.stdout
    assert f"pod {pod.id} is terminated and RunPod keeps no output of it" in with_key.stdout
    assert "is not shown" not in with_key.stderr
