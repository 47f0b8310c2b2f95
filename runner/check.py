"""``runner check [JOB]``: is this machine ready to run jobs? One line per thing a job relies on (the
RunPod API key, the S3 bucket of its runs, the registry login its image is pushed with, the Docker
engine, a GPU), each ``ok`` or what to do about it.

With a job file, each check is about that job (its bucket, written and read with the credentials its
trainer will get; the registry of its ``image.push_to``; its backend's needs), and a check the job
needs that fails makes the exit status non-zero. Without one, every check that is set up on this
machine is tried (a RunPod key that is set must work), and what is not set up is said, not failed.

Nothing here changes anything but a probe object it writes and deletes under the job's runs."""

from __future__ import annotations

import json as jsonlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from runner.preflight import DOCKER_HUB, docker_logins, placeholder, registry_host
from trainer.dataset_cache import s3_environment

OK, FAIL, SKIP = "ok", "fail", "skip"
#: Seconds any one check may take (a hung endpoint must not hang the command).
TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, fail or skip (not set up, and not needed)
    detail: str
    fix: str = ""
    needed: bool = False  # a failure of this check makes the command fail

    def line(self, width: int) -> str:
        mark = {OK: "ok  ", FAIL: "FAIL", SKIP: "-   "}[self.status]
        text = f"{mark}  {self.name:<{width}}  {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix and self.status != OK else text


def run_checks(job_file: str | None = None, environ: Mapping[str, str] | None = None) -> list[Check]:
    """Every check, in order; with ``job_file``, about that job. Raises ``JobFileError`` for a bad file."""
    env = dict(os.environ if environ is None else environ)
    job = None
    if job_file is not None:
        from runner.spec import load_job

        job = load_job(job_file)
    return [runpod_key(job, env), s3_storage(job, env), registry_login(job, env), docker_engine(job, env),
            gpu_visible(job, env)]


def main(job_file: str | None, json: bool) -> None:
    """Print the checks (or JSON) and exit 1 when a needed one failed."""
    from trainer.jobfile import JobFileError

    try:
        checks = run_checks(None if job_file is None else str(job_file))
    except JobFileError as e:
        from runner.show import fail

        fail(str(e))
    failed = [c for c in checks if c.status == FAIL and c.needed]
    if json:
        print(jsonlib.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(c.line(width), flush=True)
    if failed:
        raise SystemExit(1)


# --- RunPod ---------------------------------------------------------------------------------------
def runpod_key(job: Any, env: dict[str, str]) -> Check:
    from runner.runpod import ENV_API_KEY, base_url

    name = "RunPod API key"
    needed = job.backend == "runpod" if job is not None else bool(env.get(ENV_API_KEY))
    fix = f"export {ENV_API_KEY}=... (RunPod console → Settings → API Keys; read/write for pods)"
    if not env.get(ENV_API_KEY):
        why = "not set" + ("" if needed else " (needed only for the runpod backend)")
        return Check(name, FAIL if needed else SKIP, why, fix if needed or job is None else "", needed)
    from runner.runpod.errors import AuthError, RunPodError
    from runner.runpod.http import Transport

    url = base_url(env)
    try:  # one request, no retries: a listing of the account's pods needs a valid key and nothing else
        answer = Transport(env[ENV_API_KEY], url).request("GET", "/v2/pods", retry=False, timeout=TIMEOUT_S) or {}
    except AuthError as e:
        return Check(name, FAIL, f"refused by RunPod ({e.status}: {e.said or 'invalid key'})",
                     f"the key is wrong, revoked or lacks pod permissions: make a new one and {fix}", needed)
    except RunPodError as e:
        return Check(name, FAIL, f"could not ask RunPod: {e}", f"check the network and {url}", needed)
    pods = answer.get("pods", []) if isinstance(answer, dict) else []
    return Check(name, OK, f"valid ({len(pods)} pod{'s' if len(pods) != 1 else ''} on the account, {url})",
                 needed=needed)


# --- S3 -------------------------------------------------------------------------------------------
def s3_storage(job: Any, env: dict[str, str]) -> Check:
    name = "S3 storage"
    if job is None:
        return _s3_reachable(env)
    root = job.storage_root or ""
    if not root.startswith("s3://"):
        return Check(name, SKIP, f"the job's runs are in a folder of this machine ({root or 'the state folder'})")
    from runner.datacheck import trainer_environ
    from trainer.storage import open_storage
    from trainer.storage_api import StorageError

    trainer_env = {**trainer_environ(job, env), "TRAINER_S3_CONNECT_TIMEOUT": "3",
                   "TRAINER_S3_READ_TIMEOUT": str(int(TIMEOUT_S))}
    uri = root.rstrip("/")  # each run is a prefix under it, named when the job is submitted
    try:
        with tempfile.TemporaryDirectory() as work, s3_environment(trainer_env):
            storage = open_storage(uri, cache_dir=work)
            try:
                storage.check()  # the trainer's own probe: list, write and delete an object under the run
            finally:
                storage.close()
    except StorageError as e:
        fix = "fix the bucket, endpoint (AWS_ENDPOINT_URL_S3) or keys"
        if "credentials" in str(e) and not set(job.spec.secrets) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}:
            fix = "list AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY under `secrets:` in the job, and export them"
        return Check(name, FAIL, f"{uri}: {e}", fix, True)
    except Exception as e:  # an endpoint that kept failing: say so here rather than on a paid machine
        return Check(name, FAIL, f"{uri}: {type(e).__name__}: {e}", "check AWS_ENDPOINT_URL_S3 and the network", True)
    return Check(name, OK, f"{uri}: reachable and writable with the trainer's credentials", needed=True)


def _s3_reachable(env: dict[str, str]) -> Check:
    """No job: the shell's S3 settings, if any, can list buckets (writing needs a bucket: give a job)."""
    name = "S3 storage"
    if not env.get("AWS_ACCESS_KEY_ID"):
        return Check(name, SKIP, "no AWS_ACCESS_KEY_ID set (needed for s3:// storage; `runner check JOB` checks "
                                 "a job's bucket)")
    import boto3
    from botocore.config import Config

    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    where = endpoint or "AWS S3"
    try:
        client = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"), aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        ).client("s3", endpoint_url=endpoint, config=Config(connect_timeout=3, read_timeout=TIMEOUT_S,
                                                            retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
        buckets = client.list_buckets().get("Buckets", [])
    except Exception as e:
        return Check(name, FAIL, f"{where}: {type(e).__name__}: {str(e)[:200]}",
                     "check AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", True)
    return Check(name, OK, f"{where}: reachable, the keys list {len(buckets)} bucket(s); `runner check JOB` "
                           f"also writes to a job's bucket", needed=True)


# --- the registry ---------------------------------------------------------------------------------
def registry_login(job: Any, env: dict[str, str]) -> Check:
    name = "registry login"
    push_to = job.spec.image.push_to if job is not None else None
    if not push_to:
        if job is not None and job.backend == "runpod" and not job.spec.image.name:
            return Check(name, FAIL, "a RunPod job needs an image in a registry",
                         "set image.push_to: REGISTRY/REPO (and `docker login REGISTRY`), or image.name", True)
        logins = docker_logins(env)
        listed = ", ".join(sorted(logins.hosts)) or "none"
        return Check(name, SKIP, f"no image.push_to to check{' (no job given)' if job is None else ''}; "
                                 f"logged in to: {listed}")
    host = registry_host(push_to)

    if placeholder(push_to) or "<" in push_to:
        return Check(name, FAIL, f"image.push_to is still a placeholder ({push_to})",
                     "set it to a repository you can push to, e.g. ghcr.io/<you>/spot-runner", True)
    logins = docker_logins(env)
    if host in logins.hosts:
        return Check(name, OK, f"{host}: credentials in {logins.where} (for {push_to})", needed=True)
    if logins.has(host):
        return Check(name, OK, f"{host}: may be in the credential store {logins.unlisted_store!r}, whose helper "
                               f"could not list its servers (for {push_to})", needed=True)
    return Check(name, FAIL, f"{host}: no credentials in {logins.where} (image.push_to: {push_to})",
                 f"docker login {host if host != DOCKER_HUB else ''}".rstrip(), True)


# --- the Docker engine ----------------------------------------------------------------------------
def docker_engine(job: Any, env: dict[str, str]) -> Check:
    name = "Docker engine"
    needed = job is not None and (job.backend == "docker" or (job.backend == "runpod" and not job.spec.image.name))
    why = "" if needed or job is None else " (this job does not use it)"
    from runner.backends import docker_client
    from runner.backends.base import BackendError

    with s3_environment(env):
        host = docker_client.docker_host()
        try:
            client = docker_client.connect(timeout=int(TIMEOUT_S))
        except BackendError as e:
            return Check(name, FAIL if needed else SKIP, f"not reachable{why}: {e}".split("; ", 1)[0],
                         str(e).split("; ", 1)[-1] if needed or job is None else "", needed)
        try:
            version = client.version().get("Version", "?")
        finally:
            client.close()
    return Check(name, OK, f"Docker {version} at {host}{why}", needed=needed)


# --- GPUs -----------------------------------------------------------------------------------------
def gpu_visible(job: Any, env: dict[str, str], nvidia_smi: str | None = None) -> Check:
    """The NVIDIA GPUs of this machine, from ``nvidia-smi -L`` (no torch, no CUDA library loaded here)."""
    name = "GPU"
    if job is not None and job.backend == "runpod":
        return Check(name, SKIP, "the job's GPUs are RunPod's")
    from runner.backends import docker_client

    if job is not None and job.backend == "docker" and docker_client.is_remote(env.get("DOCKER_HOST")):
        return Check(name, SKIP, f"not checked: the job's engine is on another machine ({env.get('DOCKER_HOST')})")
    needed = job is not None and bool(job.gpus)
    why = "" if needed or job is None else " (this job trains on CPU)"
    smi = nvidia_smi or shutil.which("nvidia-smi", path=env.get("PATH"))
    fix = ("install the NVIDIA driver (nvidia-smi must list the GPUs), or remove resources.gpu to train on CPU"
           if needed or job is None else "")
    if smi is None:
        return Check(name, FAIL if needed else SKIP, f"no NVIDIA driver here (nvidia-smi not found){why}", fix, needed)
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        return Check(name, FAIL if needed else SKIP, f"nvidia-smi failed: {e}{why}", fix, needed)
    gpus = [line.split(" (UUID", 1)[0] for line in done.stdout.splitlines() if line.startswith("GPU ")]
    if done.returncode != 0 or not gpus:
        said = (done.stderr or done.stdout).strip().splitlines()
        return Check(name, FAIL if needed else SKIP, f"nvidia-smi sees no GPU ({said[0] if said else done.returncode})"
                     f"{why}", fix, needed)
    names = sorted({g.split(": ", 1)[-1] for g in gpus})
    wanted = f"; the job asks for {job.spec.resources.gpu_count}" if needed else ""
    if needed and len(gpus) < job.spec.resources.gpu_count:
        return Check(name, FAIL, f"{len(gpus)} visible ({', '.join(names)}){wanted}",
                     "ask for fewer (resources.gpu_count) or run it where there are more", needed)
    return Check(name, OK, f"{len(gpus)} visible: {', '.join(names)}{wanted}{why}", needed=needed)
