"""A misspelled option on a RunPod job spends nothing: no image, no pod, no job recorded."""

from __future__ import annotations

from tests.integration.runpod.conftest import write_job


def test_submit_with_dryrun_typo_creates_no_pod(runner, emulator, s3_bucket, runpod_project):
    write_job(runpod_project, s3_bucket)
    done = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", "--dryrun",
                      timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == "error: unknown option --dryrun for 'runner submit'; did you mean --dry-run?"
    assert emulator.pods == {} and runner.job_ids() == []
    # and the same line spelled right is a dry run that asks RunPod for prices but creates nothing
    planned = runner.run("submit", "jobs/quickstart.yaml", "--backend", "runpod", "--gpu", "rtx3090", "--dry-run",
                         timeout=120)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert emulator.pods == {} and runner.job_ids() == []
