"""Places a job's attempts can run, behind one interface (:mod:`runner.backends.base`).

Backends are imported only when used, so ``python -m runner --help`` stays fast."""

from __future__ import annotations

from runner.backends.base import Backend, BackendError, BackendUnavailable

__all__ = ["AVAILABLE", "Backend", "BackendError", "BackendUnavailable", "get_backend"]

#: Backends this version can run jobs on.
AVAILABLE = ("local", "docker", "runpod")


def get_backend(name: str) -> Backend:
    """The backend called ``name``; :class:`BackendUnavailable` with what to do instead when it cannot be used."""
    if name == "local":
        from runner.backends.local import LocalBackend

        return LocalBackend()
    if name == "docker":
        from runner.backends.docker import DockerBackend

        return DockerBackend()
    if name == "runpod":
        from runner.backends.runpod import RunPodBackend

        return RunPodBackend()
    raise BackendUnavailable(f"unknown backend {name!r}; expected one of: {', '.join(AVAILABLE)}")
