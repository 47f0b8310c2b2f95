"""The quickstart end to end, then ``runner pull`` and ``runner report``: the results come home in a
folder, with final/ equal (tensor by tensor, by hash) to the best checkpoint's weights, the samples,
the report and the TensorBoard events; from a local run and from a run in S3."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.fixtures.jobs import ROOT, make_job, write_s3_job
from tests.fixtures.s3 import S3Server
from trainer import contract

SHORT = {"train": {"max_steps": 40, "eval": {"every_steps": 20}, "checkpoint": {"every_steps": 20},
                   "finish": {"samples": {"count": 2, "max_new_tokens": 64}}}}


def tensor_sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def best_weights(best_pt: bytes, tmp: Path) -> dict[str, torch.Tensor]:
    """best.pt's weights as evaluated: with EMA on (the quickstart's), the averaged ones."""
    path = tmp / "best.pt"
    path.write_bytes(best_pt)
    best = torch.load(path, map_location="cpu", weights_only=True)
    return {**best["model"], **(best.get("ema") or {})}


def check_pulled(folder: Path, best: dict[str, torch.Tensor]) -> None:
    final = load_file(folder / "final" / "model.safetensors")
    assert final and {k: tensor_sha(v) for k, v in final.items()} == {k: tensor_sha(best[k]) for k in final}
    assert (folder / "final" / "config.json").is_file()
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["sample-1.txt", "sample-2.txt", "samples.json"]
    report = json.loads((folder / "report.json").read_text())
    assert report["final"]["chosen"] == "best" and report["steps"] == 40
    assert "| best |" in (folder / "report.md").read_text()
    assert any(p.name.startswith("events.out.tfevents") for p in (folder / "tensorboard").iterdir())
    assert not (folder / "checkpoints").exists()  # results, not the training state


def test_quickstart_then_pull_brings_home_best_weights_samples_and_report(runner, tmp_path):
    job = make_job(tmp_path, SHORT)
    submitted = runner.run("submit", str(job), "--json", timeout=900)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    record = json.loads(submitted.stdout)
    assert record["state"] == "done"
    job_id, run = record["id"], Path(record["run_uri"])

    pulled = runner.run("pull", job_id, "--to", str(tmp_path / "home"), "--json", timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    summary = json.loads(pulled.stdout)
    assert summary["job_id"] == job_id and summary["files"] >= 7
    check_pulled(tmp_path / "home", best_weights((run / contract.BEST).read_bytes(), tmp_path))

    shown = runner.run("report", job_id, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith((run / contract.REPORT_MD).read_text().rstrip())
    assert f"Billed (the runner's records for {job_id}): " in shown.stdout and "1 attempt(s)" in shown.stdout
    as_json = json.loads(runner.run("report", job_id, "--json", timeout=120).stdout)
    assert as_json["billed"]["attempts"] == 1 and as_json["preemptions"] == 0  # the runner passed its figures
    assert as_json["usd"] == 0.0 and as_json["billed_hours"] > 0

    # By default into ./<job id>.
    here = tmp_path / "elsewhere"
    here.mkdir()
    again = subprocess.run([sys.executable, "-m", "runner", "pull", job_id], capture_output=True, text=True, cwd=here,
                           env=runner.env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{job_id}: " in again.stdout and "file(s)" in again.stdout
    check_pulled(here / job_id, best_weights((run / contract.BEST).read_bytes(), tmp_path))


def test_pull_from_a_run_in_s3_uses_the_jobs_own_endpoint(runner, s3_bucket: S3Server, tmp_path):
    data = {"train": {"data": {"train": str(ROOT / "jobs" / "data" / "python_reference.txt")}}}
    job = write_s3_job(tmp_path / "job.yaml", s3_bucket, f"s3://{s3_bucket.bucket}/runs", SHORT, data)
    env = {**runner.env, **{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")}}
    submitted = runner.run("submit", str(job), "--json", env=env, timeout=900)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    record = json.loads(submitted.stdout)
    run_uri = record["run_uri"]
    assert run_uri.startswith("s3://")

    # This shell has the credentials the job forwards, not the endpoint: that is the job's own env:.
    shell = {k: v for k, v in env.items() if k not in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION")}
    pulled = runner.run("pull", record["id"], "--to", str(tmp_path / "home"), env=shell, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    key = run_uri.removeprefix(f"s3://{s3_bucket.bucket}/") + "/" + contract.BEST
    best_pt = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key=key)["Body"].read()
    check_pulled(tmp_path / "home", best_weights(best_pt, tmp_path))
