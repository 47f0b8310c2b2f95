"""The in-container restart loop (what the hand workflow did with a bash ``while`` loop): rerun the
trainer after a crash, with backoff, a bounded number of times; never after done, and never after
an interruption or a failure that a rerun cannot fix. Signals are passed on to the trainer."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from trainer import contract

log = logging.getLogger("trainer.restart")


def restart_loop(job: str, run_uri: str, cache_dir: str | None, max_restarts: int, backoff: float, nproc: int = 1) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s restart-loop: %(message)s", datefmt="%H:%M:%S")
    code = _loop(job, run_uri, cache_dir, max_restarts, backoff, nproc)
    if code != contract.EXIT_INTERRUPTED:
        # Done, or failed beyond what a restart fixes: in a RunPod pod, which would restart this
        # container and bill on, stop the pod. Interrupted means someone is stopping it already.
        from trainer.runpod_pod import in_pod, stop_own_pod

        if in_pod():
            stop_own_pod(f"the trainer {contract.EXIT_MEANING.get(code, f'exited {code}')}")
    return code


def _loop(job: str, run_uri: str, cache_dir: str | None, max_restarts: int, backoff: float, nproc: int) -> int:
    cmd = contract.trainer_command(job, run_uri, nproc, python=sys.executable, cache_dir=cache_dir)
    child: subprocess.Popen | None = None
    stopping = False

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)

    crashes = 0
    while True:
        started = time.time()
        child = subprocess.Popen(cmd)
        code = child.wait()
        if code < 0:  # killed by signal N: report it as a shell would (128+N), not as 256-N
            code = 128 - code
        if nproc > 1 and code != contract.EXIT_DONE:
            code = _code_of_group(code, run_uri, cache_dir, started)
        if code == contract.EXIT_DONE:
            return code
        meaning = contract.EXIT_MEANING.get(code, f"crashed (exit {code})")
        if stopping or code == contract.EXIT_INTERRUPTED:
            log.info("trainer %s; not restarting (we are being stopped)", meaning)
            return code
        if code in contract.EXIT_PERMANENT:
            log.error("trainer exited: %s; a restart cannot fix that", meaning)
            return code
        crashes += 1
        if crashes > max_restarts:
            log.error("trainer %s; giving up after %d restarts", meaning, max_restarts)
            return code
        delay = backoff * 2 ** (crashes - 1)
        log.warning("trainer %s; restart %d of %d in %.0fs", meaning, crashes, max_restarts, delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not stopping:
            time.sleep(min(0.2, deadline - time.monotonic()))
        if stopping:
            return contract.EXIT_INTERRUPTED


def _code_of_group(torchrun_code: int, run_uri: str, cache_dir: str | None, started: float) -> int:
    """torchrun's exit code read together with this launch's status.json (see the contract)."""
    from trainer.storage import open_storage

    try:
        status = contract.Status.read(open_storage(run_uri, cache_dir))
    except Exception as e:  # storage trouble: judge by torchrun's code alone
        log.warning("could not read status.json to classify the exit: %s", e)
        return torchrun_code
    if status is not None and status.heartbeat < started:  # written by an earlier launch: says nothing of this one
        status = None
    return contract.exit_code_of_group(torchrun_code, status)
