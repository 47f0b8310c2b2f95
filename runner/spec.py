"""The job file: one schema for the whole file, validated before anything is launched.

The ``train:`` section belongs to the trainer and is validated through its torch-free schema
(``trainer.config.parse_train``); everything else belongs to the runner and is described here.
Every problem is reported as ``file:line: field: what was expected``, all of them at once.

Imports pydantic and yaml: import this module only in commands that read a job file."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from runner.catalog import GpuType, load_catalog
from runner.secret_guard import ENV_NAME, looks_like_secret_name, looks_like_secret_value, redact
from trainer import jobvars
from trainer.config import TrainConfig, parse_train, resolve_path
from trainer.contract import ENV_ATTEMPT_ID, RUNNER_BILLING_ENV
from trainer.jobfile import JobFileError, LocatedYaml, dotted, load_yaml, validation_problems

BACKENDS = ("local", "docker", "runpod")
SUPERVISORS = ("none", "docker", "runpod")
#: Backends whose trainer runs on another machine: it cannot write to a folder on this one. A provider
#: bills those machines; the others run on machines of yours (see ``runner.cost.own_machine``).
REMOTE_BACKENDS = ("runpod",)
#: Environment variables the runner sets itself; a job may not set them.
RESERVED_ENV = frozenset({ENV_ATTEMPT_ID, *RUNNER_BILLING_ENV})
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Image(_Section):
    """What the trainer runs in, for the container backends (docker, runpod); local ignores it."""

    #: A prebuilt image to run as is (nothing is built).
    name: str | None = Field(None, min_length=1)
    #: Base image for the build (the Dockerfile's base-image build argument).
    base: str | None = Field(None, min_length=1)
    dockerfile: str = Field("Dockerfile", min_length=1)
    #: Build context, relative to the job file's folder.
    context: str = Field(".", min_length=1)
    #: Registry repository the built image is pushed to (RunPod pulls images from a registry).
    push_to: str | None = Field(None, min_length=1)


def _volume_size(value: int) -> int:
    # RunPod's PersistentMount.size has "a 10 GB floor" (tests/fixtures/runpod_openapi/create-a-pod.yaml)
    if 0 < value < 10:
        raise ValueError(f"RunPod's smallest volume is 10 GB; give 10 or more, or 0 for none (got {value})")
    return value


class Resources(_Section):
    #: A GPU alias (``rtx3090``), a RunPod GPU type id, or a list of them to fail over through.
    gpu: str | list[str] | None = None
    gpu_count: int = Field(1, ge=1, le=8)
    #: Interruptible ("spot") capacity: cheaper, and the runner relaunches after a preemption.
    spot: bool = True
    #: Highest spot bid per GPU-hour in USD; default: the catalog's spot price.
    max_bid_per_gpu: float | None = Field(None, gt=0)
    #: Spot bid above RunPod's live minimum bid, USD per GPU-hour (never above max_bid_per_gpu):
    #: a little over the minimum keeps a pod from being outbid at the first change in price.
    bid_margin_per_gpu: float = Field(0.01, ge=0)
    container_disk_gb: int = Field(50, ge=1)
    #: A volume disk kept across stops (mounted at /workspace); 0 for none.
    volume_gb: Annotated[int, AfterValidator(_volume_size)] = Field(0, ge=0)
    #: What an hour of the machine costs you, USD, for the backends that run on your own machines
    #: (local, docker): free unless set. RunPod jobs pay RunPod's prices (its live ones, or the catalog's).
    price_per_hour: float | None = Field(None, ge=0)


class Budget(_Section):
    #: Stop the job (with an emergency checkpoint first) when its billed cost reaches this.
    max_usd: float = Field(gt=0)


class Retry(_Section):
    #: Relaunches after a preemption (or a lost machine) before the job is given up.
    max_preemptions: int = Field(20, ge=0)
    #: Reruns after a failure (a crash, not a preemption) before the job is given up.
    max_failures: int = Field(3, ge=0)
    #: After this many preemptions, relaunch on on-demand capacity; never when unset.
    fallback_to_on_demand_after: int | None = Field(None, ge=0)
    #: Wait before the first rerun after a failure; doubles with each failure.
    backoff_seconds: float = Field(10.0, ge=0, le=3600)


def _env_scalar(value: Any) -> str | int | float | bool:
    if isinstance(value, (str, int, float, bool)):
        return value
    kind = "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "nothing"
    raise ValueError(f"expected text, a number or true/false, got {kind}")


EnvValue = Annotated[Any, AfterValidator(_env_scalar)]


STAGE_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,30}$"


class Stage(_Section):
    """One stage of a pipeline: a run of its own (checkpoints, relaunches, cost), started when the
    stages before it are done."""

    #: Starting weights: an earlier stage's name (its best.pt), a checkpoint URI, or a run URI followed
    #: by /best or /latest; a list of stage names, or a mapping name: stage-or-URI, when it takes several.
    init_from: str | list[str] | dict[str, str] | None = None
    train: TrainConfig

    def inputs(self) -> dict[str, str]:
        """init_from as a mapping: the name the recipe knows each input by, to a stage name or URI."""
        given = self.init_from
        if given is None:
            return {}
        if isinstance(given, dict):
            return dict(given)
        items = [given] if isinstance(given, str) else given
        return {(item if _is_stage_name(item) else "init"): item for item in items}


def _is_stage_name(value: str) -> bool:
    return re.match(STAGE_PATTERN, value) is not None


class JobSpec(_Section):
    name: str = Field(pattern=NAME_PATTERN)
    backend: Literal["local", "docker", "runpod"] = "local"
    image: Image = Field(default_factory=Image)
    resources: Resources = Field(default_factory=Resources)
    #: Root of the job's run URI: ``s3://bucket/prefix`` or a local folder (relative to the job file).
    storage: str | None = Field(None, min_length=1)
    budget: Budget | None = None
    retry: Retry = Field(default_factory=Retry)
    #: Plain settings for the trainer's environment. Never credentials: see ``secrets``.
    env: dict[str, EnvValue] = Field(default_factory=dict)
    #: NAMES of environment variables forwarded from the submitting shell (their values never
    #: appear in the job file, the state or a log).
    secrets: list[str] = Field(default_factory=list)
    #: Job variables: NAME: default. ``${NAME}`` anywhere else in the file is replaced by its value;
    #: ``submit --env NAME=VALUE`` overrides it. The record keeps the values the job ran with.
    envs: dict[str, EnvValue] = Field(default_factory=dict)
    #: The trainer's section, validated by its own torch-free schema (``trainer.config``).
    train: TrainConfig | None = None
    #: Or a pipeline: stages run in this order, each its own run.
    stages: dict[str, Stage] | None = None
    #: Who relaunches the job after a preemption: ``none`` (``runner watch`` on the submitting machine),
    #: or a supervisor elsewhere that goes on while this machine is off: ``docker`` (any always-on
    #: Docker host, DOCKER_HOST) or ``runpod`` (a small RunPod CPU pod). See docs/supervisor.md.
    supervisor: Literal["none", "docker", "runpod"] = "none"

    @model_validator(mode="after")
    def _train_or_stages(self) -> JobSpec:
        if self.train is None and self.stages is None:
            raise ValueError("train: required field is missing; give a `train:` section (or `stages:` for a pipeline)")
        if self.train is not None and self.stages is not None:
            raise ValueError("give a `train:` section or `stages:` for a pipeline, not both")
        for i, (name, stage) in enumerate((self.stages or {}).items()):
            if not _is_stage_name(name):
                raise ValueError(f"stage name {name!r}: letters, digits and _, starting with a letter")
            earlier = list(self.stages or {})[:i]
            for ref in stage.inputs().values():
                if _is_stage_name(ref) and ref not in earlier:
                    raise ValueError(f"stages.{name}.init_from: {ref!r} is not a stage before {name} "
                                     f"(earlier stages: {', '.join(earlier) or 'none'}); give a stage name or a URI")
        return self

    def stage_spec(self, stage: str) -> JobSpec:
        """The job one stage runs: this file with the stage's train: section and no stages."""
        assert self.stages is not None
        return self.model_copy(update={"train": self.stages[stage].train, "stages": None})

    def env_text(self) -> dict[str, str]:
        """``env:`` as the trainer's environment gets it (true/false for switches)."""
        variables = {**self.envs, **self.env}  # the trainer substitutes ${NAME} in the file it reads from these
        return {k: ("true" if v else "false") if isinstance(v, bool) else str(v) for k, v in variables.items()}

    def record(self) -> str:
        """What the state database keeps of the job: the fields the file set (so defaults stay where they
        are defined, and a re-read validates as the file did), no secret values."""
        return self.model_dump_json(exclude_unset=True)

    @classmethod
    def from_record(cls, record: str) -> JobSpec:
        return cls.model_validate_json(record)


@dataclass(frozen=True)
class Job:
    """A validated job file, with the command line's overrides applied."""

    path: Path  # absolute
    sha256: str  # of the file's bytes, to notice an edit between launches
    spec: JobSpec
    gpus: tuple[GpuType, ...]  # the failover list, resolved; empty when the job names no GPU
    storage_root: str | None  # absolute path or s3:// URI; None: the local default

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def train(self) -> TrainConfig:
        return self.spec.train


def load_job(path: str | Path, *, gpu: str | list[str] | tuple[str, ...] | None = None, backend: str | None = None,
             env: Mapping[str, str] | None = None, supervisor: str | None = None) -> Job:
    """Read and validate a job file; ``gpu``, ``backend``, ``env`` (job variables) and ``supervisor``
    override the file (``--gpu``, ``--backend``, ``--env NAME=VALUE``, ``--supervisor``).

    Raises :class:`JobFileError` naming every problem. Writes nothing, launches nothing."""
    path = Path(path).expanduser().absolute()
    doc = load_yaml(path)
    values = jobvars.values_for(doc, env or {})
    doc = jobvars.resolve(doc, values)
    raw = doc.data
    if "name" not in raw:  # default: the file's name, made safe for ids
        raw = {"name": re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem)[:63] or "job", **raw}

    problems, found_secrets = _secret_problems(raw, doc)
    if isinstance(raw.get("secrets"), dict):  # already reported, with a better message than "expected a list"
        raw = {**raw, "secrets": [str(k) for k in raw["secrets"]]}
    # Each train: section is validated on its own, so its problems name train.* fields with their lines;
    # one that failed stands in as a placeholder for the rest of the schema.
    checked, more = _train_sections(raw, doc)
    problems += more
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate({**checked, "envs": values} if values else checked)
    except ValidationError as e:
        problems += [_friendlier(p) for p in validation_problems(e, doc, (), JobSpec)]

    # GPUs are checked even when other fields are wrong: a typo in the GPU is the likeliest mistake.
    resources_raw = raw.get("resources") if isinstance(raw.get("resources"), dict) else {}
    backend_name = backend if backend in BACKENDS else raw.get("backend", "local")
    gpus, more = _resolve_gpus(resources_raw.get("gpu"), backend_name, doc, gpu)
    problems += more
    storage_root: str | None = None
    if spec is not None:
        if backend is not None:
            if backend not in BACKENDS:
                problems.append(f"--backend: unknown backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
            else:
                spec = spec.model_copy(update={"backend": backend})
        if gpu is not None and not more:
            spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpu": [g.alias for g in gpus]})})
        if supervisor is not None:
            if supervisor not in SUPERVISORS:
                problems.append(f"--supervisor: unknown supervisor {supervisor!r}; expected one of: {', '.join(SUPERVISORS)}")
            else:
                spec = spec.model_copy(update={"supervisor": supervisor})
        problems += _check_supervisor(spec, doc, supervisor)
        storage_root, more = _check_storage(spec, doc, path)
        problems += more
        problems += _check_env(spec, doc)
        if spec.backend in REMOTE_BACKENDS and spec.resources.price_per_hour is not None:
            problems.append(f"{doc.where(('resources', 'price_per_hour'))}: resources.price_per_hour: the {spec.backend} "
                            f"backend pays {spec.backend}'s own prices (`python -m runner gpus`); remove it (it sets what "
                            f"an hour of your own machine costs, for the local and docker backends)")
        if spec.backend == "local":
            for prefix, section in train_sections(raw):
                problems += _check_local_data(section, doc, path, prefix)

    if problems:
        problems = sorted(dict.fromkeys(redact(p, found_secrets) for p in problems), key=_line_of)
        raise JobFileError(path, problems)
    assert spec is not None
    return Job(path, hashlib.sha256(path.read_bytes()).hexdigest(), spec, gpus, storage_root)


def train_sections(raw: Any) -> list[tuple[tuple[str, ...], Any]]:
    """Each ``train:`` section of a parsed job file with its key path: the file's own, or every
    stage's for a pipeline."""
    if not isinstance(raw, dict):
        return []
    stages = raw.get("stages")
    if isinstance(stages, dict):
        return [(("stages", str(n), "train"), st["train"]) for n, st in stages.items()
                if isinstance(st, dict) and "train" in st]
    return [(("train",), raw["train"])] if "train" in raw else []


def _train_sections(raw: dict[str, Any], doc: LocatedYaml) -> tuple[dict[str, Any], list[str]]:
    """``raw`` with each train: section replaced by its validated config, and the problems found."""
    problems: list[str] = []
    out = dict(raw)
    for prefix, section in train_sections(raw):
        try:
            train = parse_train(section, doc, prefix)
        except JobFileError as e:
            problems += e.problems
            train = TrainConfig.model_construct()
        if prefix == ("train",):
            out["train"] = train
        else:
            out["stages"] = {**out["stages"], prefix[1]: {**out["stages"][prefix[1]], "train": train}}
    return out, problems


# --- checks that need more than the schema --------------------------------------------------------
def _secret_problems(raw: dict[str, Any], doc: LocatedYaml) -> tuple[list[str], list[str]]:
    """Credentials written in the file, anywhere in it. Returns the problems and the values found
    (so no other message repeats them)."""
    problems: list[str] = []
    found: list[str] = []
    move = "remove it from the file, export it in the shell you submit from, and list its NAME under `secrets:`"

    def walk(value: Any, loc: tuple[str | int, ...]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, loc + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, loc + (i,))
        elif isinstance(value, str) and loc[:1] != ("secrets",):
            kind = looks_like_secret_value(value, strict=loc[:1] == ("env",))
            if kind:
                found.append(value)
                problems.append(f"{doc.where(loc)}: {dotted(loc)}: this looks like {kind}; credentials must never be "
                                f"written in a job file: {move}")
            elif len(loc) == 2 and loc[0] == "env" and looks_like_secret_name(str(loc[1])) and value.strip():
                found.append(value)
                problems.append(f"{doc.where(loc)}: {dotted(loc)}: {loc[1]} names a credential, so its value must not "
                                f"be in the job file: {move}")

    walk(raw, ())

    secrets = raw.get("secrets")
    if isinstance(secrets, dict):
        found += [str(v) for v in secrets.values() if v is not None]
        problems.append(
            f"{doc.where(('secrets',))}: secrets: lists the NAMES of environment variables to forward from your shell, "
            f"never their values; write `secrets: [{', '.join(map(str, secrets)) or 'HF_TOKEN'}]` and export them "
            f"before submitting"
        )
    elif isinstance(secrets, list):
        seen: set[str] = set()
        for i, name in enumerate(secrets):
            where = f"{doc.where(('secrets', i))}: secrets[{i}]"
            if not isinstance(name, str):
                problems.append(f"{where}: expected the name of an environment variable")
                continue
            if looks_like_secret_value(name, strict=True):
                found.append(name)
                problems.append(f"{where}: this is a credential, not a variable name; list only the NAME of the "
                                f"variable that holds it (for example HF_TOKEN) and export it in your shell")
            elif "=" in name:
                found.append(name.split("=", 1)[1])
                problems.append(f"{where}: write only the variable's name ({name.split('=', 1)[0]!r}); its value "
                                f"comes from the shell you submit from, never from the job file")
            elif not ENV_NAME.match(name):
                problems.append(f"{where}: {name!r} is not an environment variable name (letters, digits and _)")
            elif name in seen:
                problems.append(f"{where}: {name} is listed twice")
            seen.add(name)
    return problems, found


def _resolve_gpus(wanted: Any, backend: Any, doc: LocatedYaml,
                  override: str | list[str] | tuple[str, ...] | None) -> tuple[tuple[GpuType, ...], list[str]]:
    """The failover list, resolved through the catalog; unknown names get the closest known ones."""
    catalog = load_catalog()
    if override is not None:
        names = [str(n).strip() for n in (override.split(",") if isinstance(override, str) else override)]
        located = [(n, "--gpu") for n in names if n]
    elif isinstance(wanted, str):
        located = [(wanted, f"{doc.where(('resources', 'gpu'))}: resources.gpu")]
    elif isinstance(wanted, list):
        located = [(n, f"{doc.where(('resources', 'gpu', i))}: resources.gpu[{i}]") for i, n in enumerate(wanted)
                   if isinstance(n, str)]  # other types are reported by the schema
    else:
        located = []
    problems, gpus = [], []
    for name, where in located:
        gpu = catalog.resolve(name)
        if gpu is None:
            close = catalog.closest(name)
            hint = f"; closest known: {', '.join(close)}" if close else ""
            problems.append(f"{where}: unknown GPU {name!r}{hint} (`python -m runner gpus` lists them all)")
        elif gpu in gpus:
            problems.append(f"{where}: {name!r} is {gpu.alias}, which is already in the list")
        else:
            gpus.append(gpu)
    if backend in REMOTE_BACKENDS and not located:
        problems.append(f"{doc.where(('resources',)) if 'resources' in doc.data else doc.where(('backend',))}: "
                        f"resources.gpu: required for the {backend} backend; for example `gpu: rtx3090` "
                        f"(`python -m runner gpus` lists them)")
    return tuple(gpus), problems


def _check_storage(spec: JobSpec, doc: LocatedYaml, path: Path) -> tuple[str | None, list[str]]:
    where = f"{doc.where(('storage',))}: storage"
    if spec.storage is None:
        if spec.backend in REMOTE_BACKENDS:
            return None, [f"{doc.where(('backend',))}: storage: required for the {spec.backend} backend, whose trainer "
                          f"cannot write to this machine; add `storage: s3://BUCKET/PREFIX`"]
        return None, []
    uri = spec.storage.strip()
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
            return None, [f"{where}: {uri!r} has no valid bucket name; expected s3://BUCKET/PREFIX "
                          f"(bucket: 3-63 lowercase letters, digits, dots and dashes)"]
        return uri.rstrip("/"), []
    if parsed.scheme == "file":
        local = Path(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        return None, [f"{where}: unsupported scheme {parsed.scheme + '://'!r}; expected s3://BUCKET/PREFIX or a local folder"]
    else:
        local = Path(uri).expanduser()
    if spec.backend in REMOTE_BACKENDS:
        return None, [f"{where}: {uri!r} is a folder on this machine, which the {spec.backend} backend's trainer "
                      f"cannot reach; use `storage: s3://BUCKET/PREFIX`"]
    if not local.is_absolute():
        local = path.parent / local  # like data paths: relative to the job file's folder
    return str(local.resolve()), []


def _check_supervisor(spec: JobSpec, doc: LocatedYaml, override: str | None) -> list[str]:
    """A supervisor elsewhere launches RunPod pods, and reaches the submitting machine through S3."""
    if spec.supervisor == "none" or spec.backend == "runpod":
        return []
    where = "--supervisor" if override is not None else f"{doc.where(('supervisor',))}: supervisor"
    return [f"{where}: a supervisor on {spec.supervisor} relaunches RunPod pods; it needs `backend: runpod` "
            f"(this job's backend is {spec.backend}): set the backend, or `supervisor: none` and `runner watch`"]


def _check_env(spec: JobSpec, doc: LocatedYaml) -> list[str]:
    problems = []
    for name in spec.env:
        where = f"{doc.where(('env', name))}: env.{name}"
        if not ENV_NAME.match(name):
            problems.append(f"{where}: {name!r} is not an environment variable name (letters, digits and _)")
        elif name in RESERVED_ENV:
            problems.append(f"{where}: {name} is set by the runner for each attempt; remove it")
        elif name in spec.secrets:
            problems.append(f"{where}: {name} is also listed under secrets:; keep it in one place only")
    for i, name in enumerate(spec.secrets):
        if name in RESERVED_ENV:
            problems.append(f"{doc.where(('secrets', i))}: secrets[{i}]: {name} is set by the runner; remove it")
    return problems


def _check_local_data(train: dict[str, Any], doc: LocatedYaml, path: Path,
                      prefix: tuple[str, ...] = ("train",)) -> list[str]:
    """A local job's data files must exist now: finding out after the trainer started wastes retries."""
    data = train.get("data") if isinstance(train, dict) else None
    problems: list[str] = []
    if not isinstance(data, dict):
        return problems
    for key in ("train", "val"):
        value = data.get(key)
        items = [(value, (*prefix, "data", key))] if isinstance(value, str) else \
            [(v, (*prefix, "data", key, i)) for i, v in enumerate(value)] if isinstance(value, list) else []
        for item, loc in items:
            if not isinstance(item, str) or "://" in item:
                continue
            resolved = resolve_path(path, item)
            if not Path(resolved).exists():
                problems.append(f"{doc.where(loc)}: {dotted(loc)}: file not found: {resolved} "
                                f"(paths are relative to the job file's folder)")
    return problems


# --- message helpers ------------------------------------------------------------------------------
_MAPPING = re.compile(r"Input should be a valid dictionary or instance of \w+")


def _friendlier(problem: str) -> str:
    return _MAPPING.sub("expected a mapping of fields", problem).replace("Input should be", "expected")


def _line_of(problem: str) -> int:
    m = re.match(r"^[^\n]*?:(\d+): ", problem)
    return int(m.group(1)) if m else 0
