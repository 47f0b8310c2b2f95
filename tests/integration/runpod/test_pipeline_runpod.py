"""The user's three-stage job on the RunPod backend (the emulator built from RunPod's published API,
the project's own entrypoint in every pod, runs and data in SeaweedFS); and what it reads checked
before anything is paid for: a missing dataset or ``init_from`` fails ``submit`` with no pod."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests.fixtures.jobs import ROOT
from tests.fixtures.midi_gen import PIANISTS, write_dataset
from tests.fixtures.s3 import S3Server
from tests.integration.runpod.conftest import IMAGE
from trainer import contract

pytestmark = pytest.mark.integration


def brad_job(project: Path, **stage_changes: dict) -> Path:
    """jobs/brad_finetune.yaml as the user has it, with the emulator's image instead of a registry push."""
    doc = yaml.safe_load((ROOT / "jobs" / "brad_finetune.yaml").read_text())
    doc["image"] = {"name": IMAGE}
    for stage, changes in stage_changes.items():
        doc["stages"][stage].update(changes)
    path = project / "jobs" / "brad_finetune.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def variables(s3: S3Server, **values: str) -> list[str]:
    given = {"PRESET": "tiny", "STORAGE": f"s3://{s3.bucket}/runs", "S3_ENDPOINT": s3.endpoint, "S3_REGION": s3.region,
             **values}
    return [a for name, value in given.items() for a in ("--env", f"{name}={value}")]


def upload(s3: S3Server, folder: Path, prefix: str) -> str:
    client = s3.client()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{s3.bucket}/{prefix}/"


def get(s3: S3Server, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_the_brad_pipeline_runs_on_runpod_pods(runner, emulator, s3_bucket, runpod_project, tmp_path):
    data = tmp_path / "midi"
    write_dataset(data / "maestro", seed=1, pieces=6, beats=96)
    write_dataset(data / "pijama", seed=2, pieces=6, beats=96)
    write_dataset(data / "brad", seed=3, pieces=8, beats=96, pianists=PIANISTS[:1], corrupt=False)
    datasets = {name.upper(): upload(s3_bucket, data / name, name) for name in ("maestro", "pijama", "brad")}
    job = brad_job(runpod_project)
    done = runner.run("submit", str(job.relative_to(runpod_project)), "--backend", "runpod", "--gpu", "rtx3090",
                      *variables(s3_bucket, **datasets), timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [runner.record(j) for j in runner.job_ids()]
    by_stage = {r["id"].rsplit(".", 1)[1]: r for r in rows}
    assert set(by_stage) == {"vqvae", "style_encoder", "hybrid"}
    assert all(r["state"] == "done" for r in rows)
    assert all(len(r["attempts"]) == 1 and r["attempts"][0]["handle"]["pod_id"] for r in rows)  # one pod each
    assert emulator.live_pods() == []
    best = {s: hashlib.sha256(get(s3_bucket, f"{r['run_uri']}/{contract.BEST}")).hexdigest() for s, r in by_stage.items()}
    hybrid_init = json.loads(get(s3_bucket, f"{by_stage['hybrid']['run_uri']}/{contract.INIT_RECORD}"))
    assert {k: v["sha256"] for k, v in hybrid_init.items()} == {"vqvae": best["vqvae"], "style_encoder": best["style_encoder"]}


def test_a_missing_dataset_or_init_from_fails_at_submit_before_any_pod(runner, emulator, s3_bucket, runpod_project,
                                                                       tmp_path):
    write_dataset(tmp_path / "midi", seed=1, pieces=2, beats=32, corrupt=False)
    there = upload(s3_bucket, tmp_path / "midi", "there")
    job = brad_job(runpod_project)
    missing = f"s3://{s3_bucket.bucket}/nowhere/"
    done = runner.run("submit", str(job.relative_to(runpod_project)), "--backend", "runpod", "--gpu", "rtx3090",
                      *variables(s3_bucket, MAESTRO=there, PIJAMA=missing, BRAD=there), "--detach", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"stages.style_encoder.train.data.train: {missing}" in done.stderr
    assert "Nothing was built or launched" in done.stderr
    assert emulator.pods == {} and runner.job_ids() == []

    gone = f"s3://{s3_bucket.bucket}/runs/old-vqvae/best"
    job = brad_job(runpod_project, hybrid={"init_from": {"vqvae": gone, "style_encoder": "style_encoder"}})
    done = runner.run("submit", str(job.relative_to(runpod_project)), "--backend", "runpod", "--gpu", "rtx3090",
                      *variables(s3_bucket, MAESTRO=there, PIJAMA=there, BRAD=there), "--detach", timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"stages.hybrid.init_from: s3://{s3_bucket.bucket}/runs/old-vqvae/checkpoints/best.pt" in done.stderr
    assert emulator.pods == {} and runner.job_ids() == []
