"""The runner checks a job's data before it launches anything: an s3 dataset is listed (files, bytes)
in the dry-run plan, and a missing one, or one the job's credentials cannot read, fails ``submit``
with exit 2, the location, the job file's line and the fix, with no job recorded."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.jobs import write_s3_job
from tests.fixtures.s3 import S3Server

CORPUS = {"corpus/a.txt": b"x" * 1500, "corpus/sub/b.txt": b"y" * 2500, "corpus/c.txt": b"z" * 1000}


def s3_data_job(tmp_path: Path, s3: S3Server, train: str, **overrides) -> Path:
    return write_s3_job(tmp_path / "job.yaml", s3, f"s3://{s3.bucket}/runs",
                        {"train": {"data": {"train": train}}}, overrides)


def upload(s3: S3Server, files: dict[str, bytes]) -> None:
    client = s3.client()
    for key, data in files.items():
        client.put_object(Bucket=s3.bucket, Key=key, Body=data)


def test_dry_run_shows_the_files_and_bytes_of_an_s3_dataset(runner, s3_bucket: S3Server, tmp_path: Path):
    upload(s3_bucket, CORPUS)
    job = s3_data_job(tmp_path, s3_bucket, f"s3://{s3_bucket.bucket}/corpus/")
    env = {**runner.env, **{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")}}
    done = runner.run("submit", str(job), "--dry-run", env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"s3://{s3_bucket.bucket}/corpus/: 3 files, 5.0 KB" in " ".join(done.stdout.split())
    plan = json.loads(runner.run("submit", str(job), "--dry-run", "--json", env=env, timeout=120).stdout)
    assert plan["data"] == [{"field": "train.data.train", "location": f"s3://{s3_bucket.bucket}/corpus/",
                             "kind": "folder", "files": 3, "bytes": 5000}]
    assert not (runner.home / "state.db").exists() or runner.state().jobs() == []


def test_a_missing_s3_dataset_fails_submit_before_anything_is_recorded(runner, s3_bucket: S3Server, tmp_path: Path):
    upload(s3_bucket, CORPUS)
    job = s3_data_job(tmp_path, s3_bucket, f"s3://{s3_bucket.bucket}/corpus-v2/")
    env = {**runner.env, **{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")}}
    done = runner.run("submit", str(job), "--backend", "local", env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    line = next(n for n, text in enumerate(job.read_text().splitlines(), 1) if "corpus-v2" in text)
    assert f"{job}:{line}: train.data.train: s3://{s3_bucket.bucket}/corpus-v2/: no object under" in done.stderr
    assert f"upload the dataset there (for example `aws s3 sync DIR s3://{s3_bucket.bucket}/corpus-v2/`" in done.stderr
    assert "Nothing was built or launched" in done.stderr
    assert not (runner.home / "state.db").exists() or runner.state().jobs() == []
    assert not (runner.home / "attempts").exists()


def test_credentials_the_trainer_would_not_get_fail_submit(runner, s3_bucket: S3Server, tmp_path: Path):
    upload(s3_bucket, CORPUS)
    # The shell has the keys, but the job does not forward them: its trainer could not read the data.
    job = s3_data_job(tmp_path, s3_bucket, f"s3://{s3_bucket.bucket}/corpus/", secrets=[])
    env = {**runner.env, **{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")}}
    done = runner.run("submit", str(job), env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "list AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY under `secrets:`" in done.stderr
    # The plan still comes out (what would it cost?), with the problem in it.
    planned = runner.run("submit", str(job), "--dry-run", env=env, timeout=120)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    flat = " ".join(planned.stdout.split())
    assert "cannot be used (submit will refuse it; see below)" in flat and "under `secrets:`" in flat
    # A wrong secret key: the store's refusal, explained, and the secret itself never printed.
    job = s3_data_job(tmp_path, s3_bucket, f"s3://{s3_bucket.bucket}/corpus/")
    wrong = "W" * 40
    done = runner.run("submit", str(job), "--backend", "local", env={**env, "AWS_SECRET_ACCESS_KEY": wrong}, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "wrong credentials: AWS_SECRET_ACCESS_KEY does not match" in done.stderr
    assert wrong not in done.stdout + done.stderr and s3_bucket.secret_key not in done.stdout + done.stderr
    assert not (runner.home / "state.db").exists() or runner.state().jobs() == []


def test_a_missing_local_data_file_is_refused_for_every_backend(runner, s3_bucket: S3Server, tmp_path: Path):
    job = s3_data_job(tmp_path, s3_bucket, "data/missing.txt", backend="docker")
    env = {**runner.env, **{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")}}
    done = runner.run("submit", str(job), "--detach", env=env, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"train.data.train: data/missing.txt: not found (looked for {tmp_path}/data/missing.txt)" in done.stderr
    assert not (runner.home / "state.db").exists() or runner.state().jobs() == []


def test_extra_locations_such_as_init_from_weights_are_checked_the_same_way(s3_bucket: S3Server, tmp_path: Path):
    from runner.datacheck import DataCheckError, check_data

    upload(s3_bucket, {"runs/stage1/checkpoints/best.pt": b"w" * 2048})
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "init.safetensors").write_bytes(b"s" * 10)
    env = s3_bucket.env()
    found = check_data([("stages.vqvae.init_from", f"s3://{s3_bucket.bucket}/runs/stage1/checkpoints/best.pt"),
                        ("model.init", "weights/init.safetensors")], tmp_path, env)
    assert [(d.field, d.kind, d.files, d.bytes) for d in found] == [
        ("stages.vqvae.init_from", "file", 1, 2048), ("model.init", "file", 1, 10)]
    try:
        check_data([("stages.hybrid.init_from", f"s3://{s3_bucket.bucket}/runs/stage2/checkpoints/best.pt"),
                    ("stages.style.init_from", "weights/missing.pt")], tmp_path, env)
    except DataCheckError as e:
        assert len(e.problems) == 2  # every problem at once
        assert e.problems[0].startswith(f"stages.hybrid.init_from: s3://{s3_bucket.bucket}/runs/stage2/checkpoints/best.pt: "
                                        f"no object at s3://{s3_bucket.bucket}/runs/stage2/checkpoints/best.pt")
        assert e.problems[1].startswith(f"stages.style.init_from: weights/missing.pt: not found (looked for {tmp_path}")
    else:
        raise AssertionError("missing init_from weights passed the check")
