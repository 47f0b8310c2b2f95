"""The one narrow interface every backend implements (in the spirit of SkyPilot's sky/provision):

- ``launch`` starts one attempt. It is idempotent and keyed by the attempt id: called again for
  the same attempt (a runner that died between recording its intent and hearing back), it finds
  what the first call started instead of starting a second one.
- ``poll`` says what the attempt is doing now, cheaply; it never waits.
- ``stop`` asks the trainer to stop (SIGTERM: it writes an emergency checkpoint and exits 75),
  then forces it after a grace period, and makes sure nothing of the attempt is left running or billing.
- ``logs`` yields the attempt's output.

Every wait has a deadline. A backend knows nothing of jobs, retries or budgets: the supervisor
owns that policy; a backend only starts, watches and ends one attempt at a time."""

from __future__ import annotations

import abc
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner.catalog import GpuType

if TYPE_CHECKING:
    from runner.spec import Image


class BackendError(Exception):
    """The backend could not do what was asked; the message says why and what to do."""


class BackendUnavailable(BackendError):
    """This backend cannot be used here (not built in this version, not configured)."""


class NoCapacityError(BackendError):
    """No machine for the attempt anywhere in its GPU failover list right now; nothing was started.
    ``spot`` says whether it was spot capacity that was missing (the supervisor may fall back)."""

    def __init__(self, message: str, *, spot: bool):
        super().__init__(message)
        self.spot = spot


class SpotUnavailableError(BackendError):
    """The provider refuses spot capacity outright (not a shortage): asking again for spot cannot help."""


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one attempt. ``env`` holds secret values: it is passed to
    the trainer and never stored or logged."""

    attempt_id: str
    job_id: str
    job_file: Path
    run_uri: str
    workdir: Path
    env: dict[str, str] = field(repr=False)
    gpus: tuple[GpuType, ...] = ()  # the failover list, in order
    gpu_count: int = 1
    spot: bool = False
    max_bid_per_gpu: float | None = None
    container_disk_gb: int = 50
    volume_gb: int = 0
    image: Image | None = None  # the job file's image: section; None: its defaults
    #: (image, job file's path in it) when resolved already: a supervisor elsewhere runs the image the
    #: submitting machine built and pushed, and has no project to build from.
    image_ref: tuple[str, str] | None = None
    #: Added to the live minimum spot bid (USD per GPU-hour), never above ``max_bid_per_gpu``.
    bid_margin_per_gpu: float = 0.0
    #: What an hour of the machine costs, for the backends that run on machines of yours (None: the default).
    price_per_hour: float | None = None
    #: Where a backend tells what it did along the way (kind, message): the job's events.
    report: Callable[[str, str], None] | None = field(default=None, repr=False, compare=False)
    #: Where a backend writes what it does on this machine (an image's build, push or pull), line by line:
    #: the attempt's launch log, which `runner logs` shows without the provider's key.
    log: Callable[[str], None] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Billed:
    """What an attempt's machine cost: when it ran (its own timeline: None when unknown) and what the
    provider billed for it. ``note`` says where the two disagree (dollars that the running time at
    the machine's rate does not explain), so a mismatch is shown, not hidden."""

    started: float | None  # unix seconds
    ended: float | None
    usd: float  # compute (GPU and CPU)
    storage_usd: float = 0.0  # disks
    note: str | None = None


@dataclass(frozen=True)
class Launched:
    """What a launch got: a JSON-able ``handle`` the backend can find the attempt by again (it is
    stored in the state database, so no secrets), and what it is billed at."""

    handle: dict[str, Any]
    gpu: str | None  # the alias actually obtained (from the failover list), None for "this machine"
    spot: bool
    rate_per_hour: float  # USD per hour for all the attempt's GPUs
    on_demand_rate_per_hour: float
    adopted: bool = False  # True when launch found the attempt already started


@dataclass(frozen=True)
class Observation:
    """What an attempt is doing.

    ``running``: alive. ``exited``: ended with ``exit_code`` (or killed by ``signal``).
    ``vanished``: gone without a word (machine lost, process killed with its supervisor, pod
    taken away): the runner treats it like a preemption."""

    state: Literal["running", "exited", "vanished"]
    exit_code: int | None = None
    signal: str | None = None
    detail: str = ""

    @property
    def ended(self) -> bool:
        return self.state != "running"


class Backend(abc.ABC):
    name: str

    def preflight(self, gpu_count: int = 1) -> None:
        """What can be checked before a job is recorded or anything launched (an engine to reach, the
        GPUs asked for); :class:`BackendError` saying what to do when the job cannot run here."""
        return None

    @abc.abstractmethod
    def launch(self, request: LaunchRequest, timeout_s: float = 60.0) -> Launched:
        """Start the attempt, or find it if this attempt id was launched before. Returns once it
        is running (or has already ended), or raises :class:`BackendError` after ``timeout_s``."""

    @abc.abstractmethod
    def poll(self, handle: dict[str, Any]) -> Observation:
        """What the attempt is doing now; never waits."""

    @abc.abstractmethod
    def stop(self, handle: dict[str, Any], grace_s: float = 60.0, timeout_s: float = 30.0) -> Observation:
        """SIGTERM (emergency checkpoint), then force after ``grace_s``; afterwards nothing of the
        attempt runs or bills. Safe to call on an attempt that has already ended."""

    def billed(self, handle: dict[str, Any]) -> Billed | None:
        """The provider's own billing for the attempt once it has ended, when it keeps any (None: the
        runner's observation of start, end and rate stands)."""
        return None

    @abc.abstractmethod
    def logs(self, handle: dict[str, Any], follow: bool = False,
             until: Callable[[], bool] | None = None) -> Iterator[str]:
        """The attempt's output, line by line; with ``follow``, keep yielding new lines until the
        attempt ends (or ``until()`` says to stop)."""


def drain_lines(lines: queue.Queue, until: Callable[[], bool] | None = None) -> Iterator[str]:
    """Yield what a log-pumping thread puts on ``lines`` until it puts None, or until ``until()``
    says to stop (checked every half second while no line arrives)."""
    while True:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if until and until():
                return
            continue
        if line is None:
            return
        yield line
