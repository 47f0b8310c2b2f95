"""The image checks of a submit's pre-flight against a real Docker engine and a real registry: a
registry that asks for credentials `docker login` never stored, and a base or prebuilt image that is
neither on the engine nor pullable, are refused before anything is built or pushed."""

from __future__ import annotations

import json
from pathlib import Path

from runner import preflight
from runner.spec import load_job
from tests.fixtures.docker import BASE_IMAGE
from tests.fixtures.docker_registry import registry
from tests.fixtures.jobs import copy_project, make_job


def project_job(tmp_path: Path, image: dict) -> object:
    """A job of a copy of the project (its Dockerfile, .dockerignore and data) for the docker backend."""
    project = copy_project(tmp_path / "project", ("Dockerfile", ".dockerignore", "jobs/data"))
    return load_job(make_job(project / "jobs", {"backend": "docker", "image": image,
                                                "train": {"data": {"train": "data/python_reference.txt"}}}))


def test_a_registry_that_wants_credentials_docker_login_never_stored(docker_engine, tmp_path: Path, monkeypatch):
    config = tmp_path / "docker-config"
    config.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    with registry(tmp_path / "registry", users={"alice": "s3cret-pw"}) as reg:
        job = project_job(tmp_path, {"base": BASE_IMAGE, "push_to": f"{reg.address}/alice/trainer"})
        problems = preflight.check(job, {}).problems
        assert len(problems) == 1, problems
        assert f"image.push_to: {reg.address} wants credentials and the Docker configuration ({config}/config.json) " \
               f"has none for it; run `docker login {reg.address}`" in problems[0]
        # What `docker login` writes: then the registry is fine (the push itself uses them).
        (config / "config.json").write_text(json.dumps({"auths": {reg.address: {"auth": "YWxpY2U6czNjcmV0LXB3"}}}))
        assert preflight.check(job, {}).problems == []
    assert "does not answer" in preflight.check(job, {}).problems[0]  # the same registry, stopped


def test_a_base_or_prebuilt_image_the_engine_cannot_get_is_refused(docker_engine, tmp_path: Path):
    assert preflight.check(project_job(tmp_path / "ok", {"base": BASE_IMAGE}), {}).problems == []
    missing = "spot-runner-base:never-built"
    (problem,) = preflight.check(project_job(tmp_path / "base", {"base": missing}), {}).problems
    assert f"image.base: the image {missing} is not on the Docker engine and cannot be pulled" in problem
    assert f"`docker pull {missing}`" in problem
    (problem,) = preflight.check(project_job(tmp_path / "name", {"name": "spot-runner-prebuilt:nowhere"}), {}).problems
    assert "image.name: the image spot-runner-prebuilt:nowhere is not on the Docker engine and cannot be pulled" in problem
