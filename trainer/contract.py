"""The runner–trainer contract, in one place.

The runner never imports torch and the trainer never schedules machines; they meet only through
the job file, the run URI layout below, ``status.json`` and the exit codes. This module is
torch-free so the runner can import it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

# --- exit codes -----------------------------------------------------------------------------------
EXIT_DONE = 0
#: Any failure not covered below (a crash, an exception in user code). Retried a bounded number of times.
EXIT_FAILED = 1
#: The job file is invalid. Retrying cannot help.
EXIT_BAD_CONFIG = 2
#: Storage is misconfigured: wrong bucket, wrong credentials, unreachable endpoint. Retrying cannot help.
EXIT_STORAGE = 3
#: Training diverged: too many non-finite steps in a row. Retrying from the same checkpoint repeats it.
EXIT_DIVERGED = 4
#: The gradient-norm guard stopped the run (``train.guard.stop_grad_norm``): the step that would have
#: applied the gradient was skipped and the last good state written as ``checkpoints/latest.pt``.
#: Relaunching the same job repeats it; lower the learning rate or raise the threshold first.
EXIT_GRAD_NORM = 5
#: Stopped by SIGTERM/SIGINT after a clean emergency checkpoint (EX_TEMPFAIL): relaunch to continue.
EXIT_INTERRUPTED = 75

#: Exit codes after which relaunching the same command cannot succeed.
EXIT_PERMANENT = frozenset({EXIT_BAD_CONFIG, EXIT_STORAGE, EXIT_DIVERGED, EXIT_GRAD_NORM})

EXIT_MEANING = {
    EXIT_DONE: "done",
    EXIT_FAILED: "failed",
    EXIT_BAD_CONFIG: "invalid job file",
    EXIT_STORAGE: "storage misconfigured",
    EXIT_DIVERGED: "training diverged",
    EXIT_GRAD_NORM: "gradient norm above the guard's limit (last good state checkpointed)",
    EXIT_INTERRUPTED: "interrupted (emergency checkpoint written)",
}

# --- run layout, relative to the run URI -----------------------------------------------------------
CHECKPOINT_DIR = "checkpoints"
LATEST = "checkpoints/latest.pt"
BEST = "checkpoints/best.pt"
FINAL_DIR = "final"
STATUS = "status.json"
TENSORBOARD_DIR = "tensorboard"
LOGS_DIR = "logs"
TRAINER_LOG = "logs/trainer.log"
#: The weights a run started from (``train.init_from``): ``{name: {"uri", "sha256", "size", "step"}}``,
#: written at its first start before any step.
INIT_RECORD = "init.json"
#: Sidecar written after each checkpoint: ``{"sha256": ..., "xxh3_128": ..., "size": ..., "step": ...,
#: "source": ...}`` (hex digests; readers check the fastest one present, see ``trainer.checksums``;
#: older records have only ``sha256``).
CHECKSUM_SUFFIX = ".sha256"
#: After the last step (``trainer.finish``), before ``done``: the finished model's samples (text, or
#: ``.mid`` files for the music recipes), a LoRA adapter merged into a standalone model folder, and the
#: run's report (``report.json``, and ``report.md`` for people).
SAMPLES_DIR = "samples"
MERGED_DIR = "final/merged"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
#: What of the finish is published, so that a relaunch during it does not redo it: ``{"step": N,
#: "parts": {name: [keys]}}``.
FINISH_RECORD = "finish.json"
#: What ``runner pull`` brings home from a run: prefixes (folders end in ``/``) and files.
PULLED = (FINAL_DIR + "/", SAMPLES_DIR + "/", REPORT_JSON, REPORT_MD, TENSORBOARD_DIR + "/")
#: Under torchrun, what a rank other than 0 failed with (JSON: rank, attempt, time, error). Only rank 0
#: writes status.json; it reads these back so the failure it records names the rank that failed first.
RANK_ERROR = "logs/rank-{rank}.error.json"

_STEP_RE = re.compile(r"^checkpoints/step-(\d+)\.pt$")


def step_checkpoint(step: int) -> str:
    """Key of the history checkpoint for ``step`` (zero-padded so keys sort by step)."""
    return f"checkpoints/step-{step:09d}.pt"


def parse_step_checkpoint(key: str) -> int | None:
    m = _STEP_RE.match(key)
    return int(m.group(1)) if m else None


# --- status.json ----------------------------------------------------------------------------------
RUNNING, DONE, FAILED, INTERRUPTED = "running", "done", "failed", "interrupted"
STATES = (RUNNING, DONE, FAILED, INTERRUPTED)


@dataclass
class Status:
    """What ``status.json`` holds. ``done`` is written only after ``final/`` is complete."""

    state: str
    step: int = 0
    max_steps: int = 0
    heartbeat: float = field(default_factory=time.time)  # unix seconds of the last write
    started: float = 0.0
    attempt: str = ""  # the runner's attempt id, from RUNNER_ATTEMPT_ID when set
    host: str = ""
    pid: int = 0
    loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    #: The newest checkpoint that is durable (written, fsynced, published with its checksum): never
    #: one only queued. The runner's lost-work accounting counts from it.
    last_checkpoint_step: int | None = None
    #: Why the last checkpoint write failed; None once a later one succeeds.
    checkpoint_error: str | None = None
    error: str | None = None
    exit_code: int | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Status:
        raw: dict[str, Any] = json.loads(data)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    @classmethod
    def read(cls, storage: Any) -> Status | None:
        """The run's ``status.json`` from its storage (anything with ``get_bytes``), or None when it
        is not there yet. A torn or unreadable one raises: callers decide whether to look again."""
        raw = storage.get_bytes(STATUS)
        return cls.from_json(raw) if raw else None


# --- the smoke run (``python -m trainer smoke``, run by ``runner submit --smoke``) ---------------------
#: What the smoke run writes into its ``--out`` folder: the result (:class:`SmokeResult` as JSON) and the
#: weights it ended with (a checkpoint an ``init_from`` can load, for the next pipeline stage's smoke).
SMOKE_RESULT = "smoke.json"
SMOKE_WEIGHTS = "weights.pt"
#: A loss "falls" when the mean of its last steps is at least this fraction below the mean of its first.
SMOKE_MIN_DROP = 0.01
#: A loss that ends this fraction above where it started has diverged (not merely failed to fall).
SMOKE_DIVERGED_RISE = 0.10


@dataclass
class SmokeResult:
    """A short run of the job's own recipe and data on this machine, as the trainer measured it. The
    runner adds the projection for the full job on the chosen GPU (it owns the catalog)."""

    passed: bool
    reason: str
    recipe: str
    device: str  # cpu or cuda
    device_name: str  # the GPU's name (torch.cuda.get_device_name) or the CPU's
    threads: int
    steps: int  # optimizer steps taken
    steps_asked: int
    seconds_asked: float
    stopped_by: str  # steps, time, job_length, nonfinite, grad_norm
    batch_size: int  # examples per micro-batch used here
    job_batch_size: int  # ... and what the job asks for (per process)
    grad_accum: int
    tokens_per_step: float  # per optimizer step, as measured
    job_steps: int | None  # the full job's optimizer steps (max_steps, or epochs over the whole data)
    params: int
    trainable_params: int
    losses: list[float | None] = field(default_factory=list)  # per step; None where not finite
    loss_start: float | None = None
    loss_end: float | None = None
    loss_fell: bool = False
    nonfinite_steps: list[int] = field(default_factory=list)
    max_grad_norm: float | None = None
    max_grad_norm_step: int | None = None
    stop_grad_norm: float | None = None
    peak_rss_bytes: int = 0
    cuda_peak_bytes: int | None = None
    seconds_per_step: float | None = None  # median over the steps after the first
    first_step_seconds: float | None = None  # includes one-off warm-up (allocations, kernels)
    setup_seconds: float = 0.0  # data and model, before the first step
    optimizer: str = "adamw"
    warmup_steps: int = 0  # as used here (a long warmup is compressed so the smoke reaches the peak rate)
    data: str = ""  # what of the data the smoke trained on
    notes: list[str] = field(default_factory=list)
    weights: str | None = None  # the weights it ended with (SMOKE_WEIGHTS), when written

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> SmokeResult:
        raw: dict[str, Any] = json.loads(data)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


# --- TensorBoard tags the runner reads back (``runner curves``, ``runner cost``) ------------------------
TAG_TRAIN_LOSS = "train/loss"
TAG_VAL_LOSS = "val/loss"
#: What one checkpoint stalled the step loop, in seconds (the runner's checkpoint-interval advice).
TAG_CHECKPOINT_STALL = "checkpoint/stall_seconds"

# --- environment ----------------------------------------------------------------------------------
#: Set by the runner so status.json and logs can be tied to an attempt.
ENV_ATTEMPT_ID = "RUNNER_ATTEMPT_ID"
#: The checkpoint interval in minutes the runner computed for a job that asks for ``every_minutes: auto``.
ENV_CHECKPOINT_EVERY_MINUTES = "RUNNER_CHECKPOINT_EVERY_MINUTES"
#: The pipeline stage an attempt trains (its ``stages.<name>.train:``); unset for a one-stage job.
ENV_STAGE = "RUNNER_STAGE"
#: A stage's starting weights, as JSON {name: checkpoint URI}, resolved by the runner from ``init_from``.
ENV_INIT_FROM = "RUNNER_INIT_FROM"
#: What the job had cost before this attempt, as the runner recorded it (its report's hours, dollars and
#: preemptions survived): billed USD and machine hours, the preemptions the job came back from, and this
#: attempt's rate in USD per hour (compute and disk), when the runner knows it at launch.
ENV_BILLED_USD = "RUNNER_BILLED_USD"
ENV_BILLED_HOURS = "RUNNER_BILLED_HOURS"
ENV_PREEMPTIONS = "RUNNER_PREEMPTIONS"
ENV_USD_PER_HOUR = "RUNNER_USD_PER_HOUR"
RUNNER_BILLING_ENV = (ENV_BILLED_USD, ENV_BILLED_HOURS, ENV_PREEMPTIONS, ENV_USD_PER_HOUR)
#: RunPod: the API both halves talk to (the runner to schedule, a pod's trainer to stop its own pod),
#: the pod's own id and key (set by RunPod in every pod).
ENV_RUNPOD_BASE_URL = "RUNPOD_API_BASE_URL"
RUNPOD_DEFAULT_BASE_URL = "https://api.runpod.io"
ENV_RUNPOD_POD_ID = "RUNPOD_POD_ID"
ENV_RUNPOD_API_KEY = "RUNPOD_API_KEY"
#: Standard AWS variables the S3 storage reads; never put them in a job file or an image.
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


# --- secrets on standard input (the docker backend) ------------------------------------------------
#: ``python -m trainer.contract COMMAND...`` reads one line from its standard input, a JSON object of
#: environment variables (the job's secrets and settings), adds them to its environment and runs
#: COMMAND in its place. The docker backend starts every attempt so and writes that line into the
#: container's standard input once, when it starts it: the values live only in the processes'
#: memory, never in the container's configuration (`docker inspect`), its filesystem, the image,
#: its logs or the runner's state, and nothing is left to remove when the attempt ends.
SECRETS_LAUNCHER = ("-m", "trainer.contract")
#: The longest line the launcher reads: environment variables, not data.
MAX_SECRETS_LINE = 1 << 20


def secrets_line(values: dict[str, str]) -> bytes:
    """The line the launcher reads: ``values`` as one line of JSON."""
    return json.dumps(values).encode() + b"\n"


def exec_with_secrets_from_stdin(argv: list[str]) -> NoReturn:
    """Read the line of :func:`secrets_line` from standard input, then exec ``argv`` with it added
    to the environment and standard input at /dev/null (the line is not left for the command)."""
    if not argv:
        print("usage: python -m trainer.contract COMMAND [ARG...] < one line of JSON", file=sys.stderr)
        raise SystemExit(EXIT_FAILED)
    line = sys.stdin.buffer.readline(MAX_SECRETS_LINE)
    try:
        values = json.loads(line) if line.strip() else {}
        if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
            raise ValueError("expected an object of text values")
    except ValueError as e:
        print(f"trainer.contract: the environment line on standard input is not usable: {e}", file=sys.stderr)
        raise SystemExit(EXIT_FAILED) from None
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.execvpe(argv[0], argv, {**os.environ, **values})


# --- how a run is started -------------------------------------------------------------------------
def trainer_command(job: str, run_uri: str, nproc: int | str = 1, python: str = "python",
                    cache_dir: str | None = None) -> list[str]:
    """The command that trains ``job`` into ``run_uri``: the trainer itself for one process, and
    PyTorch's own launcher (torchrun, as ``python -m torch.distributed.run``) for more. ``nproc`` is a
    number, or ``"gpu"`` for one process per visible GPU."""
    if nproc == 1 or nproc == "1":
        head = [python, "-m", "trainer"]
    else:
        head = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "trainer"]
    return [*head, "run", job, "--run-uri", run_uri, *(["--cache-dir", cache_dir] if cache_dir else [])]


def exit_code_of_group(launcher_code: int, status: Status | None) -> int:
    """The exit code of a torchrun launch as the trainer meant it. torchrun exits 1 whenever any rank
    exits non-zero, so "interrupted" (75) or "bad config" (2) would read as a plain crash; rank 0
    writes status.json last, and its verdict stands instead. ``status`` must be this launch's own
    (the caller checks its attempt or heartbeat), else it says nothing about this exit."""
    if launcher_code == EXIT_DONE or status is None:
        return launcher_code
    if status.state == INTERRUPTED:
        return EXIT_INTERRUPTED
    if status.state == FAILED and status.exit_code:
        return status.exit_code
    return launcher_code


if __name__ == "__main__":
    exec_with_secrets_from_stdin(sys.argv[1:])
