"""Which registry an image.push_to names, and whether the Docker configuration has logged in to it
(`runner check`): read from a real config.json and a real credential helper, never a secret."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from runner.preflight import docker_logins, registry_host


@pytest.mark.parametrize(("repository", "host"), [
    ("ghcr.io/me/spot-runner", "ghcr.io"),
    ("127.0.0.1:5000/spot-runner", "127.0.0.1:5000"),
    ("localhost/spot-runner", "localhost"),
    ("me/spot-runner", "docker.io"),          # Docker Hub: a first part without a dot or a port
    ("spot-runner", "docker.io"),
    ("index.docker.io/me/x", "docker.io"),
])
def test_the_registry_of_a_repository_follows_dockers_rule(repository, host):
    assert registry_host(repository) == host


def test_logins_come_from_auths_helpers_and_the_credential_store(tmp_path: Path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-teststore"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\n[ "$1" = list ] && echo \'{"https://quay.io": "me"}\'\n')
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "config.json").write_text(json.dumps({
        "auths": {"https://index.docker.io/v1/": {"auth": "eDp5"}, "ghcr.io": {"auth": "eDp5"}, "empty.io": {}},
        "credHelpers": {"123.dkr.ecr.us-east-1.amazonaws.com": "ecr-login"},
        "credsStore": "teststore",
    }))
    logins = docker_logins({"DOCKER_CONFIG": str(tmp_path)})
    assert logins.hosts == {"docker.io", "ghcr.io", "123.dkr.ecr.us-east-1.amazonaws.com", "quay.io"}
    assert logins.where == str(tmp_path / "config.json") and logins.unlisted_store is None
    assert logins.has("index.docker.io") and not logins.has("empty.io")


def test_a_credential_store_that_cannot_list_may_hold_any_login(tmp_path: Path, monkeypatch):
    """`docker login` to a store whose helper is not on this PATH: the check cannot tell, so it does not refuse."""
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no docker-credential-* here
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "desktop"}))
    logins = docker_logins({"DOCKER_CONFIG": str(tmp_path)})
    assert logins.hosts == frozenset() and logins.unlisted_store == "desktop" and logins.has("ghcr.io")


def test_no_configuration_means_no_login(tmp_path: Path):
    logins = docker_logins({"DOCKER_CONFIG": str(tmp_path / "none")})
    assert logins.hosts == set() and "does not exist" in logins.where and not logins.has("docker.io")
