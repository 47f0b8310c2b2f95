"""`runner check [JOB]`: one line per thing a job relies on, ok or the fix, against real parts: the
RunPod emulator's key check, a SeaweedFS bucket written with the trainer's keys, the Docker
configuration's logins, this machine's Docker engine, and nvidia-smi (or its absence)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.docker import docker_engine  # noqa: F401  (a real engine: the check must find it)
from tests.fixtures.jobs import ROOT, trainer_env, write_s3_job
from tests.fixtures.runpod_emulator import RunPodEmulator

REGISTRY = "registry.example:5000"


def check(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", "check", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def by_name(done: subprocess.CompletedProcess) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


@pytest.fixture
def emulator(tmp_path: Path):
    with RunPodEmulator(tmp_path / "emulator") as emu:
        yield emu


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """A Docker configuration that has logged in to REGISTRY (what `docker login` writes)."""
    folder = tmp_path / "docker-config"
    folder.mkdir()
    auth = base64.b64encode(b"someone:not-a-real-password").decode()
    (folder / "config.json").write_text(json.dumps({"auths": {f"https://{REGISTRY}": {"auth": auth}}}))
    return folder


@pytest.fixture
def runpod_job(tmp_path: Path, s3_bucket) -> Path:
    return write_s3_job(tmp_path / "job.yaml", s3_bucket, f"s3://{s3_bucket.bucket}/runs",
                        {"backend": "runpod", "resources": {"gpu": "rtx3090"},
                         "image": {"push_to": f"{REGISTRY}/me/spot-runner"}})


@pytest.mark.usefixtures("docker_engine")
def test_every_check_passes_for_a_runpod_job_on_a_machine_set_up_for_it(runpod_job, emulator, s3_bucket,
                                                                        docker_config, tmp_path):
    env = trainer_env(**s3_bucket.env(), **emulator.env(), DOCKER_CONFIG=str(docker_config), RUNNER_HOME=str(tmp_path))
    done = check(str(runpod_job), "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    checks = by_name(done)
    assert [c["status"] for c in checks.values()] == ["ok", "ok", "ok", "ok", "skip"], checks
    assert checks["RunPod API key"]["detail"].startswith("valid (0 pods")
    assert checks["S3 storage"]["detail"] == (f"s3://{s3_bucket.bucket}/runs: reachable and writable with the "
                                              f"trainer's credentials")
    assert REGISTRY in checks["registry login"]["detail"]
    assert checks["GPU"]["detail"] == "the job's GPUs are RunPod's"
    # The probe was deleted: the check leaves nothing in the bucket.
    assert s3_bucket.client().list_objects_v2(Bucket=s3_bucket.bucket).get("KeyCount", 0) == 0
    # The plain form: one line per check, each ok.
    lines = check(str(runpod_job), env=env).stdout.splitlines()
    assert len(lines) == 5 and [ln.split()[0] for ln in lines] == ["ok", "ok", "ok", "ok", "-"], lines


def test_each_failing_check_says_what_to_do_and_the_command_fails(runpod_job, emulator, s3_bucket, tmp_path):
    env = trainer_env(**s3_bucket.env(AWS_SECRET_ACCESS_KEY="wrong" * 8), RUNPOD_API_KEY="rpa_WRONGKEY",
                      RUNPOD_API_BASE_URL=emulator.url, DOCKER_CONFIG=str(tmp_path / "no-logins"),
                      DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock", RUNNER_HOME=str(tmp_path))
    done = check(str(runpod_job), "--json", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    checks = by_name(done)
    key, s3, registry, engine = (checks[n] for n in ("RunPod API key", "S3 storage", "registry login", "Docker engine"))
    assert key["status"] == "fail" and "refused by RunPod (401" in key["detail"] and "RUNPOD_API_KEY" in key["fix"]
    assert s3["status"] == "fail" and s3_bucket.bucket in s3["detail"] and s3["fix"]
    assert registry["status"] == "fail" and registry["fix"] == f"docker login {REGISTRY}"
    assert engine["status"] == "fail" and "no-engine.sock" in engine["detail"] and engine["fix"]
    assert all(c["needed"] for c in (key, s3, registry, engine))
    # No secret in what it printed.
    assert s3_bucket.access_key not in done.stdout + done.stderr and "rpa_WRONGKEY" not in done.stdout
    lines = check(str(runpod_job), env=env).stdout.splitlines()
    assert sum(ln.startswith("FAIL") for ln in lines) == 4 and all("fix: " in ln for ln in lines if ln.startswith("FAIL"))


def test_a_placeholder_registry_and_a_missing_key_are_each_a_failure(tmp_path, s3_bucket, docker_config):
    job = write_s3_job(tmp_path / "job.yaml", s3_bucket, f"s3://{s3_bucket.bucket}/runs",
                       {"backend": "runpod", "resources": {"gpu": "rtx3090"},
                        "image": {"push_to": "ghcr.io/YOUR_USER/spot-runner"}})
    env = {k: v for k, v in trainer_env(**s3_bucket.env(), DOCKER_CONFIG=str(docker_config)).items()
           if not k.startswith("RUNPOD_")}
    done = check(str(job), "--json", env=env)
    assert done.returncode == 1
    checks = by_name(done)
    assert checks["registry login"]["status"] == "fail" and "placeholder" in checks["registry login"]["detail"]
    assert checks["RunPod API key"]["status"] == "fail" and checks["RunPod API key"]["detail"] == "not set"


def test_a_gpu_job_on_this_machine_needs_nvidia_smi_to_see_a_gpu(tmp_path):
    job = tmp_path / "gpu.yaml"
    job.write_text((ROOT / "jobs" / "quickstart.yaml").read_text().replace(
        "name: quickstart", "name: gpu\nresources:\n  gpu: rtx3090").replace(
        "data/python_reference.txt", str(ROOT / "jobs" / "data" / "python_reference.txt")))
    done = check(str(job), "--json", env=trainer_env(RUNNER_HOME=str(tmp_path)))
    gpu = by_name(done)["GPU"]
    assert gpu["needed"] is True
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    if listed is not None and listed.returncode == 0 and "GPU 0" in listed.stdout:
        assert gpu["status"] == "ok" and gpu["detail"].startswith(f"{listed.stdout.count('GPU ')} visible")
    else:  # this machine: no NVIDIA GPU, so the job cannot run here, and the command says so
        assert gpu["status"] == "fail" and "nvidia-smi" in gpu["detail"] and "resources.gpu" in gpu["fix"]
        assert done.returncode == 1


def test_without_a_job_what_is_not_set_up_is_said_but_not_failed(tmp_path):
    env = {k: v for k, v in trainer_env(RUNNER_HOME=str(tmp_path), DOCKER_CONFIG=str(tmp_path)).items()
           if not k.startswith(("RUNPOD_", "AWS_"))}
    done = check("--json", env=env)
    checks = by_name(done)
    assert checks["RunPod API key"]["status"] == "skip" and "RUNPOD_API_KEY" in checks["RunPod API key"]["fix"]
    assert checks["S3 storage"]["status"] == "skip"
    assert not any(c["needed"] and c["status"] == "fail" for c in checks.values())
    assert done.returncode == 0, done.stdout


def test_a_bad_job_file_is_refused_with_its_line(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("name: bad\nbackend: kubernetes\ntrain: {max_steps: 1}\n")
    done = check(str(job), env=trainer_env(RUNNER_HOME=str(tmp_path)))
    assert done.returncode == 2 and "bad.yaml:2" in done.stderr and done.stdout == ""
