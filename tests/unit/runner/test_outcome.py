from __future__ import annotations

import pytest

from runner.backends.base import Observation
from runner.outcome import DONE, FAILED, FAILED_PERMANENTLY, INTERRUPTED, classify
from trainer import contract


def status(state: str, **kw) -> contract.Status:
    return contract.Status(state, attempt="job-1", **kw)


@pytest.mark.parametrize("obs,stat,outcome", [
    (Observation("exited", 0), status("done", step=300), DONE),
    (Observation("exited", 0), status("running"), FAILED),  # exit 0 without done is not done
    (Observation("vanished"), status("done", step=300), DONE),  # finished, then the machine went
    (Observation("exited", 75), status("interrupted"), INTERRUPTED),
    (Observation("exited", None, "SIGKILL"), status("running"), INTERRUPTED),
    (Observation("vanished"), status("running"), INTERRUPTED),
    (Observation("vanished"), None, INTERRUPTED),
    (Observation("exited", 2), None, FAILED_PERMANENTLY),
    (Observation("exited", 3), status("failed"), FAILED_PERMANENTLY),
    (Observation("exited", 4), status("failed"), FAILED_PERMANENTLY),
    (Observation("exited", 1), status("failed", error="RuntimeError: boom"), FAILED),
    (Observation("exited", 139), None, FAILED),
    (Observation("exited", None, "SIGSEGV"), status("running"), FAILED),
    (Observation("exited", None, "SIGTERM"), status("running"), INTERRUPTED),
])
def test_classify(obs, stat, outcome):
    assert classify(obs, stat, "job-1").outcome == outcome


def test_the_failure_detail_carries_the_trainers_error():
    verdict = classify(Observation("exited", 1), status("failed", error="Traceback...\nValueError: bad data"), "job-1")
    assert verdict.detail == "exit code 1, failed: ValueError: bad data"
    other_attempt = contract.Status("failed", attempt="job-0", error="old error")
    assert "old error" not in classify(Observation("exited", 1), other_attempt, "job-1").detail


@pytest.mark.parametrize("stat,outcome", [
    (status("interrupted", exit_code=75), INTERRUPTED),  # SIGTERM to the group: one emergency checkpoint
    (status("failed", exit_code=2), FAILED_PERMANENTLY),  # a bad job file, found by every rank
    (status("failed", exit_code=4), FAILED_PERMANENTLY),  # diverged
    (status("failed", exit_code=1, error="RuntimeError: boom"), FAILED),
    (status("running"), FAILED),  # a rank crashed before rank 0 could say anything
])
def test_torchruns_exit_1_is_read_with_this_attempts_status(stat, outcome):
    assert classify(Observation("exited", 1), stat, "job-1").outcome == outcome


def test_a_status_left_by_another_attempt_does_not_change_the_verdict():
    earlier = contract.Status("interrupted", attempt="job-0", exit_code=75)
    assert classify(Observation("exited", 1), earlier, "job-1").outcome == FAILED
    earlier_bad_config = contract.Status("failed", attempt="job-0", exit_code=2)
    assert classify(Observation("exited", 1), earlier_bad_config, "job-1").outcome == FAILED
