"""A RunPod job whose dataset is missing from its bucket fails at ``submit``: exit 2, the location and
the fix, and nothing paid for: no image built or pushed, no pod created, no job recorded."""

from __future__ import annotations

from tests.integration.runpod.conftest import write_job


def test_a_missing_s3_dataset_fails_a_runpod_submit_before_any_image_or_pod(runner, emulator, s3_bucket,
                                                                             runpod_project):
    missing = f"s3://{s3_bucket.bucket}/datasets/maestro-v3/"
    # An image that would be built and pushed (no image.name): a check after the build would push it.
    job = write_job(runpod_project, s3_bucket, {"image": {"name": None, "push_to": "127.0.0.1:9/never/pushed"},
                                                "train": {"data": {"train": missing}}})
    done = runner.run("submit", str(job.relative_to(runpod_project)), "--backend", "runpod", "--gpu", "rtx3090",
                      "--detach", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"train.data.train: {missing}: no object under {missing}" in done.stderr
    assert "upload the dataset there" in done.stderr and "Nothing was built or launched" in done.stderr
    assert emulator.pods == {} and runner.job_ids() == []
    assert "never/pushed" not in done.stdout + done.stderr  # no build or push was started
    # Once the data is there, the same plan lists it.
    s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key="datasets/maestro-v3/a.mid", Body=b"MThd" * 100)
    planned = runner.run("submit", str(job.relative_to(runpod_project)), "--backend", "runpod", "--gpu", "rtx3090",
                         "--dry-run", timeout=120)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert f"{missing}: 1 file, 400 B" in " ".join(planned.stdout.split())
    assert emulator.pods == {} and runner.job_ids() == []
