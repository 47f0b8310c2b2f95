"""Before anything is built, pushed or paid for, and before a job is recorded: everything a job can be
found to lack here, for every backend, listed at once, each problem with what to do about it.

- the backend can be used: a RunPod API key; a Docker engine for the docker backend, and for a RunPod
  job whose image is built on this machine;
- the secrets the job lists are set in this shell;
- its data and ``init_from`` weights exist and are readable with the trainer's credentials
  (:mod:`runner.datacheck`);
- its image: no file the trainer reads is kept out by the ``.dockerignore``; ``image.push_to`` (and
  ``name``, ``base``) hold no placeholder such as ``ghcr.io/YOUR_USER/...``; the registry answers, and
  when it asks for credentials ``docker login`` has stored some for it; the base image (or a prebuilt
  ``image.name``) is on the engine or can be pulled.

The checks that wait on a network run side by side, each within a deadline, so a job that cannot run
is refused in a moment instead of after minutes of pulls and retries."""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Seconds a registry or an image lookup may take before the check says it did not answer.
NETWORK_DEADLINE_S = float(os.environ.get("RUNNER_PREFLIGHT_TIMEOUT_S", "8"))
#: What people leave in a template for the user to replace (one path component of an image reference).
_PLACEHOLDER = re.compile(r"^(?:your[-_]?[a-z0-9_-]*|<[^>]*>|\{[^}]*\}|changeme|change[-_]me|username|user[-_]name|"
                          r"xxx+|todo|fixme)$", re.IGNORECASE)
DOCKER_HUB = "docker.io"
#: Docker Hub's other names, as image references and the Docker configuration spell them.
_DOCKER_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


@dataclass
class Findings:
    """What the checks found: the problems (each one sentence with its fix) and the job's data locations."""

    problems: list[str] = field(default_factory=list)
    data: list[Any] = field(default_factory=list)


def check(job: Any, environ: Mapping[str, str] = os.environ, extra: Sequence[tuple[str, str]] = ()) -> Findings:
    """Every check for ``job`` (a validated :class:`runner.spec.Job`); ``extra`` are more ``(field, URI)``
    locations it reads, such as a pipeline stage's ``init_from``. Records nothing, builds nothing."""
    where = _locator(job.path)
    found = Findings()
    _import_here(job.backend)
    # Each part runs in a thread of its own: the slow ones (S3, a registry, an engine) wait side by side.
    parts: dict[str, list[str]] = {}
    threads = [_spawn(parts, "backend", lambda: _backend(job)),
               _spawn(parts, "data", lambda: _data(job, environ, extra, found)),
               _spawn(parts, "image", lambda: _image(job, where))]
    parts["secrets"] = _secrets(job, environ, where)
    for thread in threads:
        thread.join(NETWORK_DEADLINE_S + 60 if thread.name == "data" else NETWORK_DEADLINE_S + 2)
    for name in ("backend", "secrets", "data", "image"):
        if name in parts:
            found.problems += parts[name]
        else:  # still waiting: say so rather than wait on
            found.problems.append(f"the {name} check did not finish within {NETWORK_DEADLINE_S:.0f}s (a network that does "
                                  f"not answer?); try again, or check it by hand")
    found.problems = list(dict.fromkeys(found.problems))  # two checks can trip on the same thing
    return found


def refusal(problems: Sequence[str]) -> str:
    """The message of a refused submit: each problem, then that nothing happened."""
    one = len(problems) == 1
    head = problems[0] if one else f"{len(problems)} problems:\n" + "\n".join(f"- {p}" for p in problems)
    return f"{head}\nNothing was built or launched, and no job was recorded; fix {'it' if one else 'them'} and submit again."


def _import_here(backend: str) -> None:
    """Import what the checks use before they run side by side: two threads importing one package at
    once can each see it half-initialised."""
    import contextlib
    import importlib

    names = ["runner.backends", "runner.datacheck", "runner.secret_guard", "trainer.dataset_cache", "trainer.storage_api",
             f"runner.backends.{backend}"]
    if backend in ("docker", "runpod"):
        names += ["docker", "docker.errors", "runner.backends.docker_client", "runner.backends.docker_image"]
    for name in names:
        with contextlib.suppress(ImportError):  # the check that needs it says what to install
            importlib.import_module(name)


def _spawn(parts: dict[str, list[str]], name: str, do: Callable[[], list[str]]) -> threading.Thread:
    def run() -> None:
        try:
            parts[name] = do()
        except Exception as e:  # a check that breaks must say so, not pass
            parts[name] = [f"the {name} check failed: {type(e).__name__}: {e}"]

    thread = threading.Thread(target=run, name=name, daemon=True)  # one that hangs must not keep the process
    thread.start()
    return thread


def _locator(path: Path) -> Callable[[tuple[str | int, ...]], str]:
    """``file:line`` of a field of the job file (the file alone when it cannot be read again)."""
    try:
        from trainer.jobfile import load_yaml

        doc = load_yaml(path)
    except Exception:
        return lambda _loc: str(path)
    return lambda loc: doc.where(loc) if _has(doc.data, loc) else str(path)


def _has(data: Any, loc: tuple[str | int, ...]) -> bool:
    for key in loc:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


# --- the parts -------------------------------------------------------------------------------------
def _backend(job: Any) -> list[str]:
    from runner.backends import BackendError, get_backend

    try:
        get_backend(job.backend).preflight(job.spec.resources.gpu_count)
    except BackendError as e:
        return [str(e)]
    return []


def _secrets(job: Any, environ: Mapping[str, str], where: Callable) -> list[str]:
    from runner.secret_guard import forwarded

    missing = forwarded(list(job.spec.secrets), environ)[1]
    if not missing:
        return []
    one = len(missing) == 1
    return [f"{where(('secrets',))}: secrets: {', '.join(missing)} {'is' if one else 'are'} listed but not set in this "
            f"shell; export {'it' if one else 'them'} (values stay in your shell: the job file names them only)"]


def _data(job: Any, environ: Mapping[str, str], extra: Sequence[tuple[str, str]], found: Findings) -> list[str]:
    from runner.datacheck import check_job_data

    found.data = check_job_data(job, extra, environ, strict=False)
    return [d.problem for d in found.data if d.problem]


def _image(job: Any, where: Callable) -> list[str]:
    """The container backends' image: what goes in it, where it is pushed, what it is built from."""
    if job.backend not in ("docker", "runpod"):
        return []
    from runner.backends import BackendError

    settings = job.spec.image
    problems = [f"{where(('image', key))}: image.{key}: {value!r} still holds the placeholder {hole!r} of the example; "
                f"put your own there (for example ghcr.io/<your user>/spot-runner, after `docker login ghcr.io`)"
                for key in ("name", "base", "push_to") if (value := getattr(settings, key))
                and (hole := placeholder(value))]
    built = not settings.name
    if built:
        try:
            _check_contents(job)
        except BackendError as e:
            problems.append(str(e))
    if job.backend == "runpod" and built and not settings.push_to:
        problems.append(f"{where(('image',)) if where(('image',)) != str(job.path) else job.path}: image.push_to: the runpod "
                        f"backend's pods pull the job's image from a registry: set image.push_to to a repository you "
                        f"can push to (e.g. ghcr.io/<your user>/spot-runner, after `docker login ghcr.io`), or give a "
                        f"prebuilt image as image.name")
    elif built and settings.push_to and not placeholder(settings.push_to):
        problems += _registry(settings.push_to, where(("image", "push_to")))
    if job.backend == "runpod" and not built:
        return problems  # RunPod pulls a prebuilt image itself: nothing of it happens here
    problems += _engine_images(job, settings, built, where)
    return problems


def placeholder(reference: str) -> str | None:
    """The placeholder component of an image reference (``YOUR_USER`` of ``ghcr.io/YOUR_USER/x``), if any."""
    return next((part for part in re.split(r"[/:@]", reference) if _PLACEHOLDER.match(part)), None)


def _check_contents(job: Any) -> None:
    """A job whose image is built from its project must find every local file it reads in that image:
    the .dockerignore is applied now (no engine needed), not after a build and a push."""
    from runner.backends.docker_image import check_contents, context_files, find_context

    context, dockerfile = find_context(job.path, job.spec.image)
    check_contents(job.path, context, context_files(context, dockerfile))


def _engine_images(job: Any, settings: Any, built: bool, where: Callable) -> list[str]:
    """The image the engine starts from (the build's base, or a prebuilt ``image.name``) is there or can be pulled."""
    from runner.backends import BackendError, docker_client

    if built:
        from runner.backends.docker_image import base_reference, find_context

        try:
            context, dockerfile = find_context(job.path, settings)
        except BackendError as e:
            return [str(e)]
        ref, field_ = base_reference(context, dockerfile, settings), "image.base"
        if ref is None:
            return []
        origin = where(("image", "base")) if settings.base else f"{context / dockerfile}: ARG BASE_IMAGE"
    else:
        ref, field_, origin = settings.name, "image.name", where(("image", "name"))
    try:
        client = docker_client.connect(timeout=int(NETWORK_DEADLINE_S))
    except BackendError as e:
        # The docker backend's own check says so already; a RunPod job builds its image on this engine.
        return [f"the image is built on this machine's Docker engine: {e}"] if job.backend == "runpod" else []
    return image_available(client, ref, f"{origin}: {field_}")


def image_available(client: Any, ref: str, what: str) -> list[str]:
    """No problem when the engine has ``ref`` or its registry has it to pull (asked, not pulled)."""
    import docker.errors

    try:
        client.images.get(ref)
        return []
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as e:
        return [f"{what}: cannot inspect image {ref} on the Docker engine: {e.explanation or e}"]
    try:
        client.api.inspect_distribution(ref)
        return []
    except docker.errors.APIError as e:
        why = str(e.explanation or e).strip()
    return [f"{what}: the image {ref} is not on the Docker engine and cannot be pulled ({why}); pull or build it "
            f"there first (`docker pull {ref}`), `docker login` if its registry is private, or name an image the "
            f"engine has"]


# --- registries ------------------------------------------------------------------------------------
def registry_host(repository: str) -> str:
    """The registry a repository reference lives on (``docker.io`` when the first part names no host, and for
    Docker Hub's other names)."""
    first, sep, _rest = repository.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return _server_host(first)
    return DOCKER_HUB


def _registry(push_to: str, where: str) -> list[str]:
    """``image.push_to`` is a repository name, its registry answers, and it has credentials if it wants them."""
    from runner.backends import BackendError
    from runner.backends.docker_image import repository_of

    try:
        repository_of(push_to)
    except BackendError as e:
        return [f"{where}: {e}"]
    host = registry_host(push_to)
    status, why = ping_registry(host)
    if status is None:
        return [f"{where}: image.push_to: the registry {host} does not answer from this machine ({why}); check the "
                f"name and the network, or push somewhere this machine reaches"]
    if status == 401 and not docker_logins().has(host):
        return [f"{where}: image.push_to: {host} wants credentials and the Docker configuration ({docker_config_path()}) "
                f"has none for it; run `docker login {host}` (the runner never reads credentials from the job file)"]
    return []


def ping_registry(host: str, timeout: float = NETWORK_DEADLINE_S / 2) -> tuple[int | None, str]:
    """(HTTP status of the registry's ``/v2/``, or None when it cannot be reached; why not). Like the Docker
    engine, HTTPS first, and plain HTTP only for a loopback address."""
    import http.client
    import ssl

    api = "registry-1.docker.io" if host == "docker.io" else host
    loopback = api.split(":")[0] in ("localhost", "127.0.0.1", "::1") or api.startswith("127.")
    why = ""
    for scheme in ("https", "http") if loopback else ("https",):
        conn_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        kwargs = {"context": ssl.create_default_context()} if scheme == "https" else {}
        conn = conn_class(api, timeout=timeout, **kwargs)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status, ""
        except (OSError, http.client.HTTPException) as e:  # timeouts are OSErrors
            why = str(e) or type(e).__name__
        finally:
            conn.close()
    return None, why


# --- what `docker login` stored ----------------------------------------------------------------------
def docker_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker").expanduser() / "config.json"


def _server_host(server: str) -> str:
    """``https://index.docker.io/v1/`` -> ``docker.io``; ``https://ghcr.io`` -> ``ghcr.io``."""
    host = server.split("://", 1)[-1].split("/", 1)[0]
    return DOCKER_HUB if host in _DOCKER_HUB_NAMES else host


@dataclass(frozen=True)
class DockerLogins:
    """The registries the Docker configuration holds credentials for; no secret is ever read."""

    hosts: frozenset[str]
    #: The configuration file, or why it could not be read.
    where: str
    #: A ``credsStore`` whose helper could not list its servers: it may hold credentials for any registry.
    unlisted_store: str | None = None

    def has(self, host: str) -> bool:
        return _server_host(host) in self.hosts or self.unlisted_store is not None


def docker_logins(env: Mapping[str, str] | None = None, run: Callable[..., Any] | None = None) -> DockerLogins:
    """What ``docker login`` stored: ``auths`` entries, ``credHelpers``, and the servers a ``credsStore``
    lists (``docker-credential-X list`` names them, never their secrets)."""
    import subprocess

    path = docker_config_path(env)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return DockerLogins(frozenset(), f"{path} does not exist")
    except (OSError, ValueError) as e:
        return DockerLogins(frozenset(), f"{path} cannot be read: {e}")
    hosts = {_server_host(s) for s, entry in (config.get("auths") or {}).items() if entry}
    hosts |= {_server_host(s) for s in (config.get("credHelpers") or {})}
    store, unlisted = config.get("credsStore"), None
    if store:
        try:
            done = (run or subprocess.run)([f"docker-credential-{store}", "list"], capture_output=True, text=True,
                                           timeout=NETWORK_DEADLINE_S)
            hosts |= {_server_host(s) for s in json.loads(done.stdout or "{}")}
        except (OSError, ValueError, subprocess.SubprocessError):
            unlisted = store
    return DockerLogins(frozenset(hosts), str(path), unlisted)
