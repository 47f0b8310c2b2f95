"""Connecting to a Docker engine: this machine's, or a remote one through ``DOCKER_HOST``.

The Docker SDK reads the standard variables (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``). ``DOCKER_HOST=ssh://user@gpu-host`` runs everything on that host over SSH;
the ``ssh`` client of this machine is used when there is one, so ``~/.ssh/config``, ssh-agent and
``known_hosts`` apply exactly as for the ``docker`` command line."""

from __future__ import annotations

import ipaddress
import os
import shutil
from typing import Any
from urllib.parse import urlparse

from runner.backends.base import BackendError, BackendUnavailable

#: Seconds an API call may take before the engine is considered unreachable (builds and stops
#: extend it by their own durations).
API_TIMEOUT_S = 120


def docker_host() -> str:
    """The engine's address as the SDK will use it (``unix:///var/run/docker.sock`` by default)."""
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def is_remote(host: str | None = None) -> bool:
    """True when the engine runs on another machine: it cannot see this machine's folders."""
    url = urlparse(host or docker_host())
    if url.scheme in ("unix", "npipe", ""):
        return False
    try:
        return not ipaddress.ip_address(url.hostname or "").is_loopback
    except ValueError:
        return url.hostname != "localhost"


def connect(timeout: int = API_TIMEOUT_S) -> Any:
    """A ``docker.DockerClient`` that has answered a ping, or :class:`BackendError` saying what to do."""
    try:
        import docker
    except ModuleNotFoundError:
        raise BackendUnavailable(
            "the docker backend needs the Docker SDK for Python: pip install 'docker[ssh]>=7.1' "
            "(or install the project with its docker extra: pip install -e '.[docker]')"
        ) from None
    host = docker_host()
    use_ssh_client = host.startswith("ssh://") and shutil.which("ssh") is not None
    try:
        client = docker.from_env(timeout=timeout, use_ssh_client=use_ssh_client)
        client.ping()
    except Exception as e:  # DockerException, connection refused, SSH errors: all mean "no engine here"
        where = f"DOCKER_HOST={host}" if os.environ.get("DOCKER_HOST") else f"the local engine ({host})"
        hint = ("check that you can `ssh` to that host and that its user may run `docker`"
                if host.startswith("ssh://") else
                "start Docker (on a Debian host as root: infra/setup-docker-host.sh), or point DOCKER_HOST at an "
                "engine, e.g. DOCKER_HOST=ssh://user@gpu-host")
        raise BackendError(f"cannot reach a Docker engine at {where}: {_short(e)}; {hint}") from None
    return client


def describe(host: str | None = None) -> str:
    """Where containers run, for messages: 'this machine' or the remote engine's address."""
    host = host or docker_host()
    return f"the Docker engine at {host}" if is_remote(host) else "the Docker engine on this machine"


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]
