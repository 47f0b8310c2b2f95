"""How an attempt ended, from what the backend saw and what ``status.json`` says.

Done: status.json says done (the trainer writes ``done`` last, after ``final/``) and the trainer
exited 0. Interrupted: the trainer exited 75 after an emergency checkpoint, was killed by a
signal, or its process or machine vanished: a relaunch continues from the last checkpoint.
Failed: anything else; permanently when the exit code says a rerun cannot help.

torchrun (a job on more than one GPU) exits 1 whenever a rank exits non-zero; the ranks' own code is
then read from this attempt's status.json, which rank 0 writes last."""

from __future__ import annotations

from dataclasses import dataclass

from runner.backends.base import Observation
from trainer import contract

DONE = "done"
INTERRUPTED = "interrupted"
FAILED = "failed"
FAILED_PERMANENTLY = "failed_permanently"
#: Signals that something outside the trainer stopped it (a preemption, a lost machine, a person);
#: other signals mean the trainer crashed by itself.
STOP_SIGNALS = frozenset({"SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"})


@dataclass(frozen=True)
class Verdict:
    outcome: str  # one of the four above
    detail: str


def classify(obs: Observation, status: contract.Status | None, attempt_id: str) -> Verdict:
    """The verdict on an attempt that has ended (``obs.ended``)."""
    done = status is not None and status.state == contract.DONE
    if obs.exit_code == contract.EXIT_DONE or (done and obs.state == "vanished"):
        # A vanished attempt whose run says done finished before its machine went away.
        if done:
            return Verdict(DONE, f"done at step {status.step}")
        return Verdict(FAILED, "the trainer exited 0 but status.json does not say done")
    if obs.exit_code == contract.EXIT_INTERRUPTED:
        return Verdict(INTERRUPTED, "stopped with an emergency checkpoint (exit 75)")
    if obs.signal in STOP_SIGNALS:
        return Verdict(INTERRUPTED, f"the trainer was killed by {obs.signal}")
    if obs.state == "vanished":
        return Verdict(INTERRUPTED, obs.detail or "the attempt vanished")
    if obs.signal:  # SIGSEGV, SIGABRT, SIGBUS...: the trainer crashed by itself
        return Verdict(FAILED, f"the trainer crashed ({obs.signal})")
    code = obs.exit_code
    if status is not None and status.attempt == attempt_id and code is not None:
        # Under torchrun every rank's failure reads as exit 1; rank 0's status.json says what it was.
        code = contract.exit_code_of_group(code, status)
        if code == contract.EXIT_INTERRUPTED:
            return Verdict(INTERRUPTED, f"stopped with an emergency checkpoint (exit {obs.exit_code} from torchrun, "
                                        f"75 from the ranks)")
    meaning = contract.EXIT_MEANING.get(code, "failed")
    error = ""
    if status is not None and status.error and status.attempt in ("", attempt_id):
        error = f": {status.error.strip().splitlines()[-1][:300]}"
    if code in contract.EXIT_PERMANENT:
        return Verdict(FAILED_PERMANENTLY, f"exit code {code}, {meaning}{error}; a relaunch cannot fix that")
    return Verdict(FAILED, f"exit code {code}, {meaning}{error}")
