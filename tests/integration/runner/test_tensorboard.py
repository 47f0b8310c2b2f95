"""`runner tensorboard JOB`: a finished job's run, in S3 (SeaweedFS) and in a local folder, is served
by a real TensorBoard on 127.0.0.1 whose scalars API shows the job's train loss up to its last
logged step; an S3 run's event files are copied into the runner's state first. Ctrl-C stops it."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.jobs import ROOT, make_job, wait_for, write_s3_job
from tests.fixtures.s3 import free_ports
from trainer import contract

pytestmark = pytest.mark.slow  # two short trainings and two TensorBoard starts: about a minute on 2 cores

SHORT = {"max_steps": 40, "eval": {"every_steps": 20, "batches": 2}, "checkpoint": {"every_steps": 20},
         "logging": {"every_steps": 10, "heartbeat_seconds": 0.5, "sync_seconds": 1, "progress_bar": False}}


def loss_steps(port: int) -> list[int] | None:
    """The steps of train/loss TensorBoard serves (run "." is the logdir itself), or None before it answers."""
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=.&tag={contract.TAG_TRAIN_LOSS}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return [int(p[1]) for p in json.loads(response.read())]
    except (OSError, ValueError):
        return None


def serve_and_read(runner, job_id: str, env: dict, sigint_ignored: bool = False) -> tuple[list[int], str]:
    """Start `runner tensorboard`, wait for the URL it prints and the scalars it serves, then Ctrl-C it.
    With ``sigint_ignored`` the runner inherits SIGINT ignored (as from a parent that ignores it): Ctrl-C
    must stop it all the same."""
    (port,) = free_ports(1)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if sigint_ignored else None
    try:
        p = runner.start("tensorboard", job_id, "--port", str(port), env=env)
    finally:
        if sigint_ignored:
            signal.signal(signal.SIGINT, previous)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: url in runner.output(p), timeout=120, interval=0.2, what="the TensorBoard URL")
        steps = wait_for(lambda: (s := loss_steps(port)) and max(s) == 40 and s, timeout=60, interval=0.5,
                         what="TensorBoard to serve train/loss up to step 40")
    finally:
        p.send_signal(signal.SIGINT)
    assert p.wait(timeout=30) == 0, runner.output(p)
    assert loss_steps(port) is None, "TensorBoard still answers after Ctrl-C"
    return steps, runner.output(p)


def test_tensorboard_serves_an_s3_runs_scalars(runner, s3_bucket, tmp_path: Path):
    job = write_s3_job(tmp_path / "tb.yaml", s3_bucket, f"s3://{s3_bucket.bucket}/runs",
                       {"name": "tb", "train": {**SHORT, "data": {"train": str(ROOT / "jobs/data/python_reference.txt")}}})
    env = {**runner.env, **s3_bucket.env()}
    done = runner.run("submit", str(job), "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = runner.job("tb")["id"]
    steps, output = serve_and_read(runner, job_id, env)
    assert steps == [10, 20, 30, 40]
    cache = runner.home / "tensorboard" / job_id
    assert any(f.name.startswith("events.out.tfevents") for f in cache.iterdir())
    assert f"copied 1 event file(s) from s3://{s3_bucket.bucket}/runs/{job_id}/tensorboard" in output


def test_tensorboard_serves_a_local_runs_scalars(runner, tmp_path: Path):
    job = make_job(tmp_path, {"name": "tblocal", "train": SHORT})
    done = runner.run("submit", str(job), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    row = runner.job("tblocal")
    steps, _output = serve_and_read(runner, row["id"], runner.env, sigint_ignored=True)
    assert steps == [10, 20, 30, 40]
    assert not (runner.home / "tensorboard" / row["id"]).exists()  # a local run is served where it is
