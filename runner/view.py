"""Everything the runner prints for people: the live view of supervised jobs and the tables.

rich is imported here only, and this module only by commands that print for people."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from runner import state as st
from trainer import contract

_EVENT_STYLE = {
    "done": "bold green", "failed": "bold red", "preempted": "yellow", "stale": "yellow", "blocked": "bold yellow",
    "cancelled": "magenta", "cancel_requested": "magenta", "launched": "cyan", "relaunched": "cyan", "adopted": "cyan",
    "supervising": "cyan", "budget_warning": "yellow", "budget_reached": "bold yellow", "stopped": "bold yellow",
    "fallback": "yellow", "error": "red", "job_file_changed": "yellow",
}
_STATE_STYLE = {st.DONE: "green", st.FAILED: "red", st.CANCELLED: "magenta", st.OVER_BUDGET: "yellow",
                st.RUNNING: "cyan", st.WAITING: "yellow", st.PENDING: "dim"}


def clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def ago(t: float | None, now: float | None = None) -> str:
    if not t:
        return "-"
    s = max(0.0, (now or time.time()) - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def state_text(state: str) -> str:
    return f"[{_STATE_STYLE.get(state, 'white')}]{state}[/]"


class FollowView:
    """Events as lines, and one progress bar per job on a terminal (a line every few seconds elsewhere)."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self._progress = None
        self._tasks: dict[str, Any] = {}
        self._last_line: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> FollowView:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                      transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def event(self, job: st.JobRow, event: st.EventRow) -> None:
        style = _EVENT_STYLE.get(event.kind, "white")
        self.console.print(f"[dim]{clock(event.time)}[/] [bold]{escape(job.id)}[/] [{style}]{event.kind}[/] "
                           f"{escape(event.message)}", highlight=False)

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{clock(time.time())}[/] {escape(message)}", highlight=False)

    def progress(self, job: st.JobRow, attempt: st.AttemptRow | None, status: contract.Status | None) -> None:
        if status is None or not status.max_steps:
            return
        parts = [f"loss {status.loss:.3f}"] if status.loss is not None else []
        if attempt is not None:
            parts.append(f"attempt {attempt.number}")
        info = "  ".join(parts)
        if self._progress is not None:
            task = self._tasks.get(job.id)
            if task is None:
                task = self._tasks[job.id] = self._progress.add_task(escape(job.id), total=status.max_steps, info=info)
            self._progress.update(task, completed=status.step, total=status.max_steps, info=info)
            return
        last_t, last_step = self._last_line.get(job.id, (0.0, -1))
        if status.step != last_step and (time.monotonic() - last_t >= 5 or status.step == status.max_steps):
            self._last_line[job.id] = (time.monotonic(), status.step)
            self.console.print(f"[dim]{clock(time.time())}[/] [bold]{escape(job.id)}[/] step {status.step}/{status.max_steps}"
                               f" {info}", highlight=False)


def jobs_table(state: st.State, jobs: list[st.JobRow], title: str | None = None, width: int = 80) -> Table:
    """One line per job. Sized here rather than by rich, which drops whole columns when space is short:
    only the reason gives way (shortened, or left out on a very narrow terminal)."""
    counts = state.attempt_counts([j.id for j in jobs])
    now = time.time()
    headers = ("job", "state", "backend", "gpu", "steps", "attempts", "age")
    rows, reasons = [], []
    for job in jobs:
        gpu = ",".join(job.wanted_gpus()) or "-"
        # * unsupervised (a job supervised elsewhere is its supervisor's: `status JOB` says how it is)
        state_cell = job.state + ("*" if job.active and not job.remote and not job.supervised() else "")
        rows.append((job.id, state_cell, job.backend, gpu, f"{job.step}/{job.max_steps}" if job.max_steps else "-",
                     str(counts.get(job.id, 0)), ago(job.created, now)))
        reasons.append(job.reason)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    room = width - sum(widths) - 2 * len(widths)
    show_reason = room >= 10 and any(reasons)
    table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for h, w in zip(headers, widths, strict=True):
        table.add_column(h, no_wrap=True, width=w)
    if show_reason:
        table.add_column("reason", no_wrap=True, width=min(room, max(len(r) for r in reasons)))
    for row, reason in zip(rows, reasons, strict=True):
        cells = [escape(row[0]), f"[{_STATE_STYLE.get(row[1].rstrip('*'), 'white')}]{escape(row[1])}[/]", *map(escape, row[2:])]
        if show_reason:
            cells.append(escape(reason if len(reason) <= room else reason[: room - 1] + "…"))
        table.add_row(*cells)
    return table


def kv_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    return table
