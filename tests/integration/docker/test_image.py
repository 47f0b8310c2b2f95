"""The project's image, built by the runner on a real engine: tagged by what goes into it, free of
the secrets around its build, and pushed to and pulled from a real registry on 127.0.0.1."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

from rich.console import Console

from runner.backends.docker_image import LABEL_INPUTS, ensure_image, plan_build
from runner.spec import Image
from tests.fixtures.docker import BASE_IMAGE, PROJECT_FILES, write_job
from tests.fixtures.docker_registry import registry
from tests.fixtures.jobs import copy_project


def quiet(path: Path) -> Console:
    return Console(file=open(path, "a"), width=200)  # noqa: SIM115 - closed with the test process


def test_an_unchanged_job_reuses_its_image_and_any_change_that_goes_in_makes_a_new_one(
        docker_engine, docker_project, project_image, tmp_path: Path):
    job = docker_project.jobs["docker-quick"]
    settings = Image(base=BASE_IMAGE)
    again = ensure_image(docker_engine, job, Image(base=BASE_IMAGE), out=quiet(tmp_path / "out.log"))
    assert again.name == project_image.name and not again.built
    assert again.job_path == "/app/jobs/docker-quick.yaml"
    digest = plan_build(docker_engine, job, settings).digest
    assert docker_engine.images.get(project_image.name).labels[LABEL_INPUTS] == digest

    # The tag depends on content only: the same project elsewhere, with other file times, is the same image.
    moved = tmp_path / "elsewhere"
    shutil.copytree(docker_project.root, moved)
    moved_job = moved / "jobs" / "docker-quick.yaml"
    assert plan_build(docker_engine, moved_job, settings).digest == digest

    # What the .dockerignore keeps out changes nothing...
    (moved / ".env").write_text("HF_TOKEN=hf_notreallyatokenbutlongenough\n")
    (moved / "runs" / "old").mkdir(parents=True)
    (moved / "runs" / "old" / "latest.pt").write_bytes(b"\0" * 1024)
    (moved / "tests").mkdir()
    (moved / "tests" / "test_x.py").write_text("def test(): pass\n")
    assert plan_build(docker_engine, moved_job, settings).digest == digest

    # ...while code, the job file, the data and the base image each make a new image.
    trainer_file = moved / "trainer" / "contract.py"
    trainer_file.write_text(trainer_file.read_text() + "\n# a code change\n")
    code_changed = plan_build(docker_engine, moved_job, settings).digest
    assert code_changed != digest
    moved_job.write_text(moved_job.read_text().replace("seed: 1337", "seed: 1338"))
    assert plan_build(docker_engine, moved_job, settings).digest not in (digest, code_changed)
    other_base = Image(base=project_image.name)
    assert plan_build(docker_engine, job, other_base).digest != digest


def test_the_built_image_holds_none_of_the_secrets_around_its_build(docker_engine, docker_project, tmp_path: Path,
                                                                     monkeypatch):
    values = {name: secrets.token_hex(20) for name in (
        "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "RUNPOD_API_KEY", "dotenv", "nested_dotenv", "aws_credentials",
        "pem", "ssh_key", "docker_config", "netrc", "credentials_json")}
    # In the environment of the process that builds...
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "RUNPOD_API_KEY"):
        monkeypatch.setenv(name, values[name])
    # ...and in files of the project, where people keep them.
    project = copy_project(tmp_path / "project", PROJECT_FILES)
    planted = {
        ".env": f"AWS_SECRET_ACCESS_KEY={values['dotenv']}\n",
        "jobs/.env": f"HF_TOKEN={values['nested_dotenv']}\n",
        ".aws/credentials": f"[default]\naws_secret_access_key = {values['aws_credentials']}\n",
        "deploy.pem": f"-----BEGIN PRIVATE KEY-----\n{values['pem']}\n-----END PRIVATE KEY-----\n",
        "jobs/id_ed25519": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{values['ssh_key']}\n",
        ".docker/config.json": json.dumps({"auths": {"r.example": {"auth": values["docker_config"]}}}),
        ".netrc": f"machine example.com login me password {values['netrc']}\n",
        "trainer/credentials.json": json.dumps({"token": values["credentials_json"]}),
    }
    for rel, text in planted.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    # A value that must be found, so that a scan that cannot see inside the image fails this test.
    marker = secrets.token_hex(20)
    job = write_job(project, "scan", docker_project.s3, {"env": {"BUILD_MARKER": marker},
                                                            "secrets": ["AWS_ACCESS_KEY_ID", "HF_TOKEN"]})

    ref = ensure_image(docker_engine, job, Image(base=BASE_IMAGE), out=quiet(tmp_path / "build.log"), log_dir=tmp_path)
    image = docker_engine.images.get(ref.name)
    try:
        found = _scan_saved_image(image, [marker, image.labels[LABEL_INPUTS], *values.values()])
    finally:
        if ref.built:
            docker_engine.images.remove(ref.name)
    assert marker in found, "the scan did not see the job file inside the image"
    assert image.labels[LABEL_INPUTS] in found, "the scan did not see the image's configuration"
    leaked = {name for name, value in values.items() if value in found}
    assert not leaked, f"secret values found in the image: {sorted(leaked)}"
    for path in tmp_path.glob("*.log"):
        assert not any(value.encode() in path.read_bytes() for value in values.values()), f"a secret is in {path}"


def _scan_saved_image(image, needles: list[str]) -> set[str]:
    """Which ``needles`` occur anywhere in ``docker save`` of the image: every layer (uncompressed
    tars, so each file's name and bytes lie contiguous in the stream), its configuration and its
    history. Chunks overlap by the longest needle so nothing is missed at a boundary."""
    wanted = {n: n.encode() for n in needles}
    overlap = max(len(b) for b in wanted.values())
    found: set[str] = set()
    tail = b""
    for chunk in image.save(chunk_size=8 << 20):
        window = tail + chunk
        found.update(n for n, b in wanted.items() if n not in found and b in window)
        tail = window[-overlap:]
    return found


def test_push_to_and_pull_from_a_local_registry(docker_engine, docker_project, project_image, tmp_path: Path):
    with registry(tmp_path / "registry") as reg:
        repository = f"{reg.address}/spot-runner"
        job = docker_project.jobs["docker-quick"]
        section = Image(base=BASE_IMAGE, push_to=repository)
        out = quiet(tmp_path / "out.log")
        pushed = ensure_image(docker_engine, job, section, registry_required=True, out=out)
        tag = pushed.name.rsplit(":", 1)[1]
        assert pushed.name == f"{repository}:{tag}" and pushed.pushed
        assert tag == project_image.name.rsplit(":", 1)[1]  # same inputs, same tag, whatever the registry
        assert docker_engine.images.get(pushed.name).id == docker_engine.images.get(project_image.name).id

        status, body, _ = reg.get("/v2/spot-runner/tags/list")
        assert status == 200 and tag in json.loads(body)["tags"]
        status, _, headers = reg.get(f"/v2/spot-runner/manifests/{tag}",
                                     accept="application/vnd.docker.distribution.manifest.v2+json")
        digest = headers.get("Docker-Content-Digest")
        assert status == 200 and f"{repository}@{digest}" in docker_engine.images.get(pushed.name).attrs["RepoDigests"]

        # Launching again does not push again.
        assert not ensure_image(docker_engine, job, section, registry_required=True, out=out).pushed

        # Pulled back by its digest, it is the same image.
        docker_engine.images.remove(pushed.name)
        pulled = docker_engine.images.pull(f"{repository}@{digest}")
        assert pulled.id == docker_engine.images.get(project_image.name).id
        docker_engine.images.remove(f"{repository}@{digest}")
