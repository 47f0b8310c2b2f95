"""The trainer's image for a job: a prebuilt one used as given, or one built from the job's project.

A build uses the project's ``Dockerfile`` with the project's folder as its context (the nearest
folder above the job file that holds the Dockerfile, unless ``image.context`` says otherwise), so
the image holds the code, the job file and the data beside it. It is tagged by a hash of
everything that goes into it (the files the ``.dockerignore`` lets through, the build arguments,
the base image's id), so an unchanged job reuses its image and any change builds a new one; the
Docker layer cache makes a code-only change a matter of seconds.

Nothing from the environment goes into a build: the only build argument is ``BASE_IMAGE``.
Secrets reach the trainer when its container starts, never through the image.

With ``image.push_to`` the image is pushed to that registry repository (RunPod pulls from a
registry); credentials come from the Docker configuration (``docker login``), never from the job."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runner import paths
from runner.backends.base import BackendError
from runner.spec import Image, train_sections

#: Where the Dockerfile puts the project inside the image (its WORKDIR).
IMAGE_ROOT = PurePosixPath("/app")
#: Label of built images: the hash of their inputs.
LABEL_INPUTS = "org.spot-runner.inputs"
#: Repository of built images that go to no registry.
LOCAL_REPOSITORY = "spot-runner"
BUILD_TIMEOUT_S = 3 * 3600
_HASH_VERSION = b"spot-runner image inputs v1\n"


@dataclass(frozen=True)
class ImageRef:
    """An image ready to run: its reference, and where the job file lies inside it."""

    name: str
    job_path: str
    built: bool = False
    pushed: bool = False


@dataclass(frozen=True)
class BuildPlan:
    """What a build would send and how its result is tagged."""

    context: Path
    dockerfile: str  # relative to the context, /-separated
    files: tuple[str, ...]  # what the .dockerignore lets through, relative, sorted
    buildargs: dict[str, str]
    digest: str  # hex sha256 of all the inputs
    repository: str
    job_path: str = field(default="")

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.digest[:16]}"


# --- where the project is --------------------------------------------------------------------------
def find_context(job_file: Path, settings: Image) -> tuple[Path, str]:
    """The build context and the Dockerfile's path in it. ``image.context`` is relative to the job
    file's folder; left at ``.``, the nearest folder at or above it that holds the Dockerfile."""
    job_dir = job_file.resolve().parent
    start = (job_dir / settings.context).resolve()
    candidates = [start] if settings.context != "." else [start, *start.parents]
    for folder in candidates:
        if (folder / settings.dockerfile).is_file():
            return folder, PurePosixPath(Path(settings.dockerfile).as_posix()).as_posix()
    where = f"{start}" if settings.context != "." else f"{start} or any folder above it"
    raise BackendError(
        f"no {settings.dockerfile} in {where}, so there is no image to build for {job_file}; keep the job inside "
        f"the project (the folder with the Dockerfile), set image.context and image.dockerfile, or give a "
        f"prebuilt image as image.name"
    )


def dockerignore_patterns(context: Path) -> list[str]:
    """The context's .dockerignore lines, as Docker reads them (blank lines and comments dropped)."""
    path = context / ".dockerignore"
    if not path.exists():
        return []
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


class IgnoreRules:
    """.dockerignore rules, applied strictly: a path is left out when the last pattern that matches
    it, or any folder above it, excludes it. (The Docker SDK's own walk lets files under a
    top-level ``.docker/`` through a ``**/.docker`` pattern, so the runner builds its own context.)"""

    def __init__(self, patterns: Iterable[str]):
        from docker.utils.build import Pattern  # the SDK's translation of one pattern, as Docker's

        self.patterns = [p for p in (Pattern(line) for line in patterns) if p.dirs]

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for pattern in self.patterns:
            if any(pattern.match(prefix) for prefix in prefixes):
                result = not pattern.exclusion
        return result

    def may_include_below(self, rel_dir: str) -> bool:
        """Whether an exception (``!pattern``) could bring back something inside an excluded folder."""
        return any(p.exclusion and (p.cleaned_pattern.startswith(rel_dir + "/") or p.cleaned_pattern.startswith("**"))
                   for p in self.patterns)


def context_files(context: Path, dockerfile: str) -> tuple[str, ...]:
    """The files (and links) a build of ``context`` sends, relative and sorted: what the
    .dockerignore lets through, plus the Dockerfile and the .dockerignore (the builder reads both)."""
    rules = IgnoreRules(dockerignore_patterns(context))
    found: set[str] = set()
    for folder, dirs, names in os.walk(context):
        rel_folder = Path(folder).relative_to(context).as_posix()
        prefix = "" if rel_folder == "." else rel_folder + "/"
        keep_dirs = []
        for d in sorted(dirs):
            rel = prefix + d
            if (context / rel).is_symlink():
                names.append(d)  # a link to a folder is sent as a link
            elif not rules.excluded(rel) or rules.may_include_below(rel):
                keep_dirs.append(d)
        dirs[:] = keep_dirs
        found.update(prefix + n for n in names if not rules.excluded(prefix + n))
    found.update(f for f in (dockerfile, ".dockerignore") if (context / f).is_file())
    refuse_credentials(context, found)
    return tuple(sorted(found))


#: File names that hold credentials. The build refuses to send them even when a .dockerignore
#: would let them in: a secret in an image is in every copy of it, forever.
CREDENTIAL_FILES = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*",
                    "id_ed25519*", ".netrc", ".pypirc", ".git-credentials", "credentials", "credentials.*",
                    ".aws/*", ".docker/config.json", ".ssh/*", ".kube/config", "*.kdbx")
#: Templates people commit next to such files hold no secret.
_TEMPLATES = (".example", ".sample", ".template", ".dist", ".pub")


def refuse_credentials(context: Path, files: Iterable[str]) -> None:
    import fnmatch

    bad = []
    for rel in files:
        tail2 = "/".join(rel.split("/")[-2:])
        name = rel.rsplit("/", 1)[-1]
        if name.endswith(_TEMPLATES):
            continue
        if any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(tail2, p) for p in CREDENTIAL_FILES):
            bad.append(rel)
    if bad:
        raise BackendError(
            f"{', '.join(bad[:5])}{' and more' if len(bad) > 5 else ''} would go into the image and "
            f"{'looks' if len(bad) == 1 else 'look'} like credentials; add {'it' if len(bad) == 1 else 'them'} to "
            f"{context / '.dockerignore'} (secrets reach the trainer at run time, through `secrets:` in the job)"
        )


def context_tar(context: Path, files: Iterable[str]) -> Any:
    """The build context as a tar in a temp file, reproducible: sorted, owned by root, every file
    time zero, modes 0644 or 0755 (the layer cache then depends on content alone)."""
    import tarfile
    import tempfile

    out = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            path = context / rel
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isreg():
                info.mode = 0o755 if info.mode & 0o111 else 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            elif info.issym():
                tar.addfile(info)
    out.seek(0)
    return out


def job_path_in_image(job_file: Path, context: Path) -> str:
    try:
        rel = job_file.resolve().relative_to(context)
    except ValueError:
        raise BackendError(
            f"the job file {job_file} is outside the build context {context}; the image must contain it, so move "
            f"it into the project (for example under jobs/) or set image.context to a folder that holds it"
        ) from None
    return str(IMAGE_ROOT / rel.as_posix())


#: Files a job may start from (weights, adapters, token shards): a string in the ``train:`` section
#: that ends so, and is no URI, names a file the image must hold, whatever field it is in (a custom
#: recipe's option, a pipeline stage's ``init_from``).
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors", ".bin", ".npy", ".npz", ".gguf", ".onnx")


def _local_data_paths(job_file: Path) -> Iterator[tuple[str, Path]]:
    """The local files and folders the job's trainer will read, as it will resolve them (relative to
    the job file's folder): ``data.train``/``val`` entries (files, folders, glob patterns), a local
    tokenizer or model folder, and any weights file named anywhere in ``train:`` (each stage's, for a
    pipeline). Job variables take the file's defaults."""
    from trainer import jobvars
    from trainer.config import resolve_path
    from trainer.jobfile import JobFileError, load_yaml

    try:
        raw = load_yaml(job_file)
        doc = jobvars.resolve(raw, jobvars.declared(raw)).data
    except JobFileError:
        return
    seen: set[tuple[str, str]] = set()
    for prefix, train in train_sections(doc):
        if isinstance(train, dict):
            yield from _section_paths(job_file, train, ".".join(prefix), seen, resolve_path)


def _section_paths(job_file: Path, train: dict[str, Any], prefix: str, seen: set[tuple[str, str]],
                   resolve_path: Any) -> Iterator[tuple[str, Path]]:

    def local(value: Any) -> bool:
        return isinstance(value, str) and bool(value.strip()) and "://" not in value

    def emit(field: str, value: str, must_exist: bool) -> Iterator[tuple[str, Path]]:
        full = resolve_path(job_file, value)
        if any(c in full for c in "*?["):
            import glob

            paths = [Path(m) for m in sorted(glob.glob(full, recursive=True))]
        else:
            paths = [Path(full)] if must_exist or Path(full).exists() else []
        for path in paths:
            if (field, str(path)) not in seen:
                seen.add((field, str(path)))
                yield field, path

    data = train.get("data") if isinstance(train.get("data"), dict) else {}
    for key in ("train", "val"):
        value = data.get(key)
        for i, item in enumerate([value] if isinstance(value, str) else value if isinstance(value, list) else []):
            if local(item):
                yield from emit(f"{prefix}.data.{key}" + (f"[{i}]" if isinstance(value, list) else ""), item, True)
    # A tokenizer or model given as a path (not a hub id): only when it is there on this machine.
    model = train.get("model") if isinstance(train.get("model"), dict) else {}
    for name, value in ((f"{prefix}.data.tokenizer", data.get("tokenizer")), (f"{prefix}.model.name_or_path", model.get("name_or_path"))):
        if local(value) and "/" in value:  # "gpt2", "bytes": hub ids and built-ins, never files
            yield from emit(name, value, False)

    def walk(value: Any, loc: str) -> Iterator[tuple[str, Path]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, f"{loc}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, f"{loc}[{i}]")
        elif local(value) and value.lower().endswith(WEIGHT_SUFFIXES) and not loc.startswith(f"{prefix}.data."):
            yield from emit(loc, value, True)

    yield from walk(train, prefix)


def _expand(path: Path) -> list[Path]:
    """A file, or every file under a folder (what the trainer would read of it)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
    return [path]


def _excluding_line(context: Path, rel: str) -> tuple[int, str] | None:
    """The .dockerignore line (number, text) that leaves ``rel`` out: the last pattern matching it or
    a folder above it that excludes. None when no line does."""
    from docker.utils.build import Pattern

    path = context / ".dockerignore"
    if not path.exists():
        return None
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    found: tuple[int, str] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern = Pattern(line)
        if pattern.dirs and any(pattern.match(p) for p in prefixes):
            found = None if pattern.exclusion else (number, line)
    return found


def check_contents(job_file: Path, context: Path, files: Iterable[str]) -> None:
    """Every local file the job reads (the job file, its data, its weights) must go into the image:
    name the first that is kept out, the ``.dockerignore`` line that drops it, and how to let it in."""
    included = set(files)
    wanted = [("the job file", job_file.resolve())] + [(f, p.resolve()) for f, p in _local_data_paths(job_file)]
    for what, path in wanted:
        try:
            rel_top = path.relative_to(context).as_posix()
        except ValueError:
            raise BackendError(f"{what} {path} is outside the build context {context}, so the image cannot contain "
                               f"it; move it into the project or point image.context at a folder that holds it") from None
        if not path.exists():
            continue  # the data check at submit says it is missing, with the job file's line
        left_out = [p.relative_to(context).as_posix() for p in _expand(path)]
        left_out = [rel for rel in left_out if rel not in included]
        if not left_out:
            continue
        rel = left_out[0]
        more = f" (and {len(left_out) - 1} more file{'s' if len(left_out) > 2 else ''} under {rel_top})" \
            if len(left_out) > 1 else ""
        line = _excluding_line(context, rel)
        by = f"line {line[0]} of {context / '.dockerignore'} (`{line[1]}`)" if line else str(context / ".dockerignore")
        allow = f"!{rel_top}/**" if path.is_dir() else f"!{rel}"
        raise BackendError(
            f"{what}: {rel}{more} would be left out of the image by {by}, and the trainer reads it; add a "
            f"`{allow}` line after that one, or keep the file in S3 (s3://BUCKET/...) and name that instead")


# --- the hash ---------------------------------------------------------------------------------------
def base_reference(context: Path, dockerfile: str, settings: Image) -> str | None:
    """The base image the build starts from: image.base, else the Dockerfile's BASE_IMAGE default."""
    if settings.base:
        return settings.base
    text = (context / dockerfile).read_text(encoding="utf-8", errors="replace")
    m = re.search(r"^\s*ARG\s+BASE_IMAGE\s*=\s*(\S+)", text, re.M)
    return m.group(1).strip("\"'") if m else None


def inputs_digest(context: Path, dockerfile: str, files: Iterable[str], buildargs: dict[str, str],
                  base_id: str) -> str:
    """sha256 over every input of the build: each file's path, mode and bytes, the build
    arguments and the id of the base image."""
    from trainer.dataset_cache import file_sha256

    h = hashlib.sha256(_HASH_VERSION)
    h.update(f"dockerfile {dockerfile}\nbase {base_id}\nargs {json.dumps(buildargs, sort_keys=True)}\n".encode())
    for rel in files:
        path = context / rel
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            h.update(f"L {rel} -> {os.readlink(path)}\n".encode())
        elif stat.S_ISREG(st.st_mode):
            h.update(f"F {rel} {'x' if st.st_mode & 0o111 else '-'} {file_sha256(path)}\n".encode())
    return h.hexdigest()


def repository_of(push_to: str | None) -> str:
    if not push_to:
        return LOCAL_REPOSITORY
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(push_to)
    if tag or "@" in push_to:
        raise BackendError(f"image.push_to: {push_to!r} names a tag; give only the repository (for example "
                           f"ghcr.io/you/spot-runner): the runner tags each image with the hash of what went into it")
    if repo != repo.lower():
        raise BackendError(f"image.push_to: {push_to!r}: repository names must be lowercase")
    return repo


def plan_build(client: Any, job_file: Path, settings: Image, out: Any = None) -> BuildPlan:
    """Everything about a build except running it. Pulls the base image first when this engine
    lacks it: its id is part of the hash."""
    context, dockerfile = find_context(job_file, settings)
    files = context_files(context, dockerfile)
    job_path = job_path_in_image(job_file, context)
    check_contents(job_file, context, files)
    base = base_reference(context, dockerfile, settings)
    buildargs = {"BASE_IMAGE": settings.base} if settings.base else {}
    base_id = _ensure_local(client, base, out) if base else "none"
    digest = inputs_digest(context, dockerfile, files, buildargs, base_id)
    return BuildPlan(context, dockerfile, files, buildargs, digest, repository_of(settings.push_to), job_path)


# --- engine operations -----------------------------------------------------------------------------
def ensure_image(client: Any, job_file: Path, settings: Image | None, *, registry_required: bool = False,
                 out: Any = None, log_dir: Path | None = None) -> ImageRef:
    """The image to run the job in: ``image.name`` as given (pulled when this engine lacks it), or
    the job's build, reused when unchanged, built otherwise, pushed when ``image.push_to`` is set.
    ``registry_required``: the image will run on a machine that can only pull it (RunPod)."""
    settings = settings or Image()
    out = out or default_console()
    if settings.name:
        context, _ = find_context(job_file, settings)
        job_path = job_path_in_image(job_file, context)
        if not registry_required:
            _ensure_local(client, settings.name, out)
        return ImageRef(settings.name, job_path)
    if registry_required and not settings.push_to:
        raise BackendError("the image must be in a registry the GPU host can pull from: set image.push_to to a "
                           "repository (and `docker login` to it), or give a prebuilt image as image.name")
    plan = plan_build(client, job_file, settings, out)
    built = False
    if find_image(client, plan.tag) is not None:
        out.print(f"[dim]image {plan.tag} is up to date (built from {plan.context})[/]")
    else:
        build(client, plan, out, log_dir)
        built = True
    pushed = push(client, plan.repository, plan.tag.rsplit(":", 1)[1], out) if settings.push_to else False
    return ImageRef(plan.tag, plan.job_path, built=built, pushed=pushed)


def build(client: Any, plan: BuildPlan, out: Any = None, log_dir: Path | None = None, nocache: bool = False) -> None:
    """Build ``plan`` with host networking (no bridge is needed), streaming the engine's progress;
    the whole output goes to ``log_dir`` (default: builds/ in the runner's state folder).
    ``nocache``: rebuild every layer (for measuring a full build)."""
    import docker.errors

    out = out or default_console()
    log_path = (log_dir or paths.state_dir() / "builds") / f"{plan.digest[:16]}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out.print(f"building {plan.tag} from {plan.context} ({len(plan.files)} files; log: {log_path})")
    try:
        with context_tar(plan.context, plan.files) as tar, open(log_path, "w", encoding="utf-8") as log:
            stream = client.api.build(
                fileobj=tar, custom_context=True, dockerfile=plan.dockerfile, tag=plan.tag, buildargs=plan.buildargs,
                labels={LABEL_INPUTS: plan.digest}, network_mode="host", rm=True, forcerm=True, pull=False, nocache=nocache,
                decode=True, timeout=BUILD_TIMEOUT_S,
            )
            _follow(stream, log, out)
    except docker.errors.APIError as e:
        raise BackendError(f"the engine refused to build {plan.tag}: {e.explanation or e}; log: {log_path}") from None
    except BackendError as e:
        raise BackendError(f"building {plan.tag} failed: {e}; the full log is {log_path}") from None
    if find_image(client, plan.tag) is None:
        raise BackendError(f"the build of {plan.tag} ended without an image; see {log_path}")


def push(client: Any, repository: str, tag: str, out: Any = None) -> bool:
    """Push ``repository:tag`` unless this engine already pushed it there. Credentials: the Docker
    configuration (``docker login REGISTRY``). Returns True when it pushed."""
    import docker.errors

    out = out or default_console()
    ref = f"{repository}:{tag}"
    image = client.images.get(ref)
    if any(d.startswith(f"{repository}@") for d in image.attrs.get("RepoDigests") or []):
        out.print(f"[dim]{ref} is already in the registry[/]")
        return False
    registry = repository.split("/", 1)[0] if "/" in repository else "docker.io"
    out.print(f"pushing {ref}")
    try:
        stream = client.api.push(repository, tag=tag, stream=True, decode=True)
        _follow(stream, None, out)
    except (docker.errors.APIError, BackendError) as e:
        text = str(getattr(e, "explanation", None) or e)
        hint = (f"log in first with `docker login {registry}` (the runner uses the Docker configuration's "
                f"credentials, never the job file's)" if re.search(r"auth|denied|401|403", text, re.I)
                else "check that the registry is reachable from this machine")
        raise BackendError(f"pushing {ref} failed: {text}; {hint}") from None
    return True


def _ensure_local(client: Any, ref: str, out: Any) -> str:
    """The id of image ``ref`` on this engine, pulling it (with progress) when it is not there."""
    import docker.errors

    try:
        return client.images.get(ref).id
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as e:
        raise BackendError(f"cannot inspect image {ref}: {e.explanation or e}") from None
    out.print(f"pulling {ref}")
    repo, tag = _split(ref)
    try:
        stream = client.api.pull(repo, tag=tag, stream=True, decode=True)
        _follow(stream, None, out)
        return client.images.get(ref).id
    except (docker.errors.APIError, docker.errors.ImageNotFound, BackendError) as e:
        raise BackendError(f"image {ref} is not on this engine and pulling it failed: "
                           f"{getattr(e, 'explanation', None) or e}; check the name, `docker login` for a private "
                           f"registry, or build it (leave image.name unset)") from None


def _split(ref: str) -> tuple[str, str | None]:
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(ref)
    return repo, tag or ("latest" if "@" not in ref else None)


def find_image(client: Any, ref: str) -> Any | None:
    """The engine's image ``ref``, or None when it has none of that name."""
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _follow(stream: Iterable[dict[str, Any]], log: Any, out: Any, every_s: float = 5.0) -> None:
    """Show an engine's JSON progress stream as lines: build steps and their output as they come,
    layer transfers as a summary every ``every_s`` seconds. Lines only, no live display of its
    own: the runner's follow view (a live display) shows them above its progress bars. Raises
    BackendError on the stream's error message."""
    layers: dict[str, str] = {}
    shown = time.monotonic()
    for chunk in stream:
        if "error" in chunk:
            message = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
            if log:
                log.write(f"ERROR: {message}\n")
            raise BackendError(str(message).strip())
        text = chunk.get("stream")
        if text:
            if log:
                log.write(text)
            for line in text.rstrip("\n").splitlines():
                if line.startswith("Step "):
                    out.print(f"[bold]{_escape(line)}[/]")
                elif line.strip() and not line.startswith((" ---> ", "Removing intermediate container")):
                    out.print(f"[dim]  {_escape(line)}[/]")
            continue
        if "status" in chunk:
            line = " ".join(str(chunk[k]) for k in ("id", "status", "progress") if chunk.get(k))
            if log:
                log.write(line + "\n")
            if chunk.get("id"):  # one layer's transfer: summarised
                layers[chunk["id"]] = chunk["status"]
                if time.monotonic() - shown >= every_s:
                    shown = time.monotonic()
                    counts = collections.Counter(layers.values())
                    out.print("[dim]  layers: " + ", ".join(f"{n} {_escape(k.lower())}" for k, n in counts.items()) + "[/]")
            else:
                out.print(f"[dim]  {_escape(line)}[/]")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def default_console() -> Any:
    """Where the image code shows its progress when nobody says: the terminal's standard error."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)
