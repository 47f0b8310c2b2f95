"""The user's own job, as the user runs it: ``jobs/brad_finetune.yaml`` with ``PRESET=tiny`` on the
local backend, its three datasets and its runs in a real S3 server, generated MIDI for data. The
second stage's trainer is SIGKILLed mid-run: it resumes, and the first stage is not redone."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from runner import proc
from tests.fixtures.jobs import ROOT
from tests.fixtures.midi_gen import PIANISTS, write_dataset
from tests.fixtures.s3 import S3Server
from trainer import contract

pytestmark = pytest.mark.integration


def upload_folder(s3: S3Server, folder: Path, prefix: str) -> str:
    client = s3.client()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{s3.bucket}/{prefix}/"


def read(s3: S3Server, uri: str) -> bytes | None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception:  # not there (yet)
        return None


def val_metric(log: str, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf"val loss [^\n]*?\b{name} ([-\d.e+]+)", log)]


def brad_inputs(runner, s3_bucket: S3Server, tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The job variables and environment of jobs/brad_finetune.yaml at PRESET=tiny: generated MIDI for the
    three stages uploaded to the test S3 server, runs stored there too."""
    data = tmp_path / "midi"
    write_dataset(data / "maestro", seed=1, pieces=8, beats=128)
    write_dataset(data / "pijama", seed=2, pieces=8, beats=128)
    write_dataset(data / "brad", seed=3, pieces=12, beats=128, pianists=PIANISTS[:1], corrupt=False)
    variables = {
        "PRESET": "tiny",
        "MAESTRO": upload_folder(s3_bucket, data / "maestro", "maestro"),
        "PIJAMA": upload_folder(s3_bucket, data / "pijama", "pijama"),
        "BRAD": upload_folder(s3_bucket, data / "brad", "brad"),
        "STORAGE": f"s3://{s3_bucket.bucket}/runs",
        "S3_ENDPOINT": s3_bucket.endpoint,
        "S3_REGION": s3_bucket.region,
    }
    env = {**runner.env, **{k: v for k, v in s3_bucket.env().items() if k.startswith("AWS_")},
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return variables, env


def test_the_brad_pipeline_trains_three_stages_from_s3_and_survives_a_kill_in_stage_two(runner, s3_bucket: S3Server,
                                                                                         tmp_path: Path):
    variables, env = brad_inputs(runner, s3_bucket, tmp_path)
    args = ["submit", str(ROOT / "jobs" / "brad_finetune.yaml"), "--backend", "local"]
    for name, value in variables.items():
        args += ["--env", f"{name}={value}"]
    submit = runner.start(*args, env=env)

    # Stage 2 training: kill its trainer, as a lost machine would.
    deadline = time.monotonic() + 900
    killed = None
    while killed is None:
        assert submit.poll() is None, runner.output(submit)
        assert time.monotonic() < deadline, runner.output(submit)
        ids = [j for j in runner.job_ids() if j.endswith(".style_encoder")]
        if ids:
            status_bytes = read(s3_bucket, f"{runner.job_run_uri(ids[0])}/{contract.STATUS}")
            status = contract.Status.from_json(status_bytes) if status_bytes else None
            trainer = runner.trainer(f"{ids[0]}-1")
            if status and trainer and status.attempt == f"{ids[0]}-1" and status.step >= 30 and proc.is_alive(*trainer):
                os.kill(trainer[0], signal.SIGKILL)
                killed = status.step
        time.sleep(0.5)
    assert submit.wait(timeout=900) == 0, runner.output(submit)

    state = runner.state()
    try:
        vqvae, style, hybrid = (state.job(j) for j in sorted(runner.job_ids(), key=lambda j: state.job(j).created))
        assert [j.stage for j in (vqvae, style, hybrid)] == ["vqvae", "style_encoder", "hybrid"]
        assert all(j.state == "done" for j in (vqvae, style, hybrid))
        assert len(state.attempts(vqvae.id)) == 1 and len(state.attempts(hybrid.id)) == 1  # stage 1 not redone
        first, second = state.attempts(style.id)
        assert first.outcome == "interrupted" and second.outcome == "done"
        assert 0 < second.start_step <= killed  # resumed from its own checkpoint
    finally:
        state.close()

    # Each stage starts from the weights the one before it chose as its best.
    def best_sha(job) -> str:
        return hashlib.sha256(read(s3_bucket, f"{job.run_uri}/{contract.BEST}")).hexdigest()

    style_init = json.loads(read(s3_bucket, f"{style.run_uri}/{contract.INIT_RECORD}"))
    hybrid_init = json.loads(read(s3_bucket, f"{hybrid.run_uri}/{contract.INIT_RECORD}"))
    assert style_init["vqvae"]["sha256"] == best_sha(vqvae)
    assert hybrid_init["vqvae"]["sha256"] == best_sha(vqvae)
    assert hybrid_init["style_encoder"]["sha256"] == best_sha(style)

    # And each learned what its stage is for.
    logs = {j.stage: read(s3_bucket, f"{j.run_uri}/{contract.TRAINER_LOG}").decode() for j in (vqvae, style, hybrid)}
    recon, perplexity = val_metric(logs["vqvae"], "recon_loss"), val_metric(logs["vqvae"], "codebook_perplexity")
    assert recon[-1] <= 0.7 * recon[0], recon
    assert perplexity[-1] > 4, perplexity
    accuracy = val_metric(logs["style_encoder"], "pianist_accuracy")
    assert accuracy[-1] >= 0.5, accuracy  # four pianists: chance is 0.25
    losses = [float(v) for v in re.findall(r": val loss ([\d.]+)", logs["hybrid"])]
    assert losses[-1] < losses[0], losses
    assert "skipped 4 MIDI file(s)" in logs["vqvae"]  # the corrupt files: reported, not fatal
