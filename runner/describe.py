"""A job as the user sees it: the record ``--json`` prints (id, state, run_uri, progress, cost)."""

from __future__ import annotations

import time
from typing import Any

from runner import state as st
from runner.cost import job_cost, spot_applies


def job_record(state: st.State, job: st.JobRow, *, detail: bool = False, now: float | None = None) -> dict[str, Any]:
    now = now or time.time()
    record: dict[str, Any] = {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "reason": job.reason,
        "backend": job.backend,
        "run_uri": job.run_uri,
        "job_file": job.job_file,
        "gpu": job.wanted_gpus(),
        "spot": spot_applies(job.backend, job.spec.resources.spot),
        "step": job.step,
        "max_steps": job.max_steps,
        "preemptions": job.preemptions,
        "failures": job.failures,
        "created": job.created,
        "updated": job.updated,
        "finished": job.finished,
        "supervised_by": job.supervisor_pid if job.active and job.supervised() else None,
        "supervisor": job.supervisor or "none",
        "launcher": ({"pid": job.launcher_pid, "log": job.launcher_log, "running": job.launching_in_background()}
                     if job.launcher_pid else None),
    }
    if detail:
        record["budget_usd"] = job.spec.budget.max_usd if job.spec.budget else None
        record["cost"] = job_cost(state, job, now).to_dict()
        record["attempts"] = [
            {"id": a.id, "number": a.number, "state": a.state, "outcome": a.outcome, "exit_code": a.exit_code,
             "detail": a.detail, "gpu": a.gpu, "gpu_count": a.gpu_count, "spot": bool(a.spot),
             "rate_per_hour": a.rate_per_hour,
             "started": a.started, "ended": a.ended, "start_step": a.start_step, "end_step": a.end_step,
             "handle": a.handle}
            for a in state.attempts(job.id)
        ]
        record["events"] = [{"time": e.time, "kind": e.kind, "message": e.message, "attempt_id": e.attempt_id}
                            for e in state.events(job.id)]
        record["supervisor_segments"] = [
            {"session": s.session, "place": s.place, "rate_per_hour": s.rate_per_hour, "started": s.started,
             "ended": s.ended, "usd": round(s.cost(now), 6)} for s in state.supervisor_segments(job.id)]
    return record
