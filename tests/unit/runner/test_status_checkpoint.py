"""`runner status JOB` shows the newest durable checkpoint and a checkpoint write that failed, from
the run's status.json (the trainer reports a checkpoint only once it is durable)."""

from __future__ import annotations

from pathlib import Path

from runner import state as st
from runner.cli import main
from runner.spec import load_job
from tests.fixtures.jobs import QUICKSTART
from trainer import contract


def test_status_shows_the_last_durable_checkpoint_and_a_failed_write(runner_home: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    status = contract.Status(contract.RUNNING, step=42, max_steps=300, last_checkpoint_step=30,
                             checkpoint_error="checkpoint of step 40 not written: no space left on /data/run/checkpoints: "
                                              "needed ~12 MB, free 3.1 MB (ENOSPC)")
    (run / contract.STATUS).write_bytes(status.to_json())
    spec = load_job(QUICKSTART)
    state = st.State.open()
    with state.transaction():
        state.create_job(id="quickstart-1", name="quickstart", job_file=str(spec.path), job_sha256=spec.sha256,
                         spec=spec.spec, workdir=str(tmp_path), backend="local", run_uri=str(run), max_steps=300)
        state.set_job_state("quickstart-1", st.RUNNING, "attempt 1 running", "launched", step=42)
    state.close()
    main(["status", "quickstart-1"])
    out = " ".join(capsys.readouterr().out.split())  # the table wraps long lines
    assert "step 42/300" in out and "last checkpoint at step 30" in out
    assert "checkpoint of step 40 not written: no space left on /data/run/checkpoints" in out
