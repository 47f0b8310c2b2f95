"""The project's image runs the supervisor when its first argument is `supervisor` (what the compose
profile and a RunPod supervisor pod give it), and the trainer's restart loop otherwise."""

from __future__ import annotations

import yaml

from tests.fixtures.jobs import ROOT


def test_the_image_entrypoint_has_a_supervisor_mode(docker_engine, project_image):
    out = docker_engine.containers.run(project_image.name, ["supervisor", "status", "--storage", "/tmp/control"],
                                       network_mode="host", remove=True, stdout=True, stderr=True)
    assert b"no supervisor has run for /tmp/control" in out
    out = docker_engine.containers.run(project_image.name, ["supervisor", "run", "--help"], network_mode="host",
                                       remove=True)
    assert b"usage: runner supervisor run STORAGE" in out


def test_the_compose_profile_runs_the_supervisor_through_that_mode():
    for name in ("docker-compose.yml", "docker-compose.cpu.yml"):
        service = yaml.safe_load((ROOT / name).read_text())["services"]["supervisor"]
        assert service["profiles"] == ["supervisor"] and service["command"][:2] == ["supervisor", "run"]
        assert service["restart"] == "unless-stopped"
        assert "RUNNER_RUNPOD_ACCOUNT_KEY" in service["environment"]
