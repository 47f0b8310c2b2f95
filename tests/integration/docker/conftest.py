"""Tests on a real Docker engine (started by infra/setup-docker-host.sh when there is none).

Every container uses host networking and every server listens on 127.0.0.1 only."""

from tests.fixtures.docker import docker_engine, docker_project, project_image  # noqa: F401
