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


def jobs_table(state: st.State, jobs: list[st.JobRow], title: str | None = None, width: int = 80) -> Any:
    """One line per job, the reason wrapped beside it; on a terminal too narrow for that, a block per job
    (:func:`fit_table`): no id, state or reason is ever cut short."""
    counts = state.attempt_counts([j.id for j in jobs])
    now = time.time()
    headers = ("job", "state", "backend", "gpu", "steps", "attempts", "age", "reason")
    rows = []
    for job in jobs:
        gpu = ",".join(job.wanted_gpus()) or "-"
        # * unsupervised (a job supervised elsewhere is its supervisor's: `status JOB` says how it is)
        state_cell = job.state + ("*" if job.active and not job.remote and not job.supervised() else "")
        rows.append([job.id, (state_cell, _STATE_STYLE.get(job.state, "white")), job.backend, gpu,
                     f"{job.step}/{job.max_steps}" if job.max_steps else "-", str(counts.get(job.id, 0)),
                     ago(job.created, now), job.reason])
    if not any(job.reason for job in jobs):
        headers, rows = headers[:-1], [r[:-1] for r in rows]
    return fit_table(headers, rows, width, title=title, wrap={"reason"})


def _text_of(cell: Any) -> str:
    return cell[0] if isinstance(cell, tuple) else str(cell)


def _styled(cell: Any, style: str = "") -> Any:
    from rich.text import Text

    if isinstance(cell, tuple):
        return Text(cell[0], style=cell[1])
    return Text(str(cell), style=style)


def fit_table(headers: Any, rows: list[list[Any]], width: int, *, title: str | None = None, wrap: Any = (),
              right: Any = (), footer: list[Any] | None = None) -> Any:
    """A table that never cuts a value: columns as wide as their widest value, a header wrapped at its
    spaces when the column is narrower, the ``wrap`` columns (free text) wrapped at word boundaries
    into the room left. When even that does not fit in ``width``, each row becomes a block: its first
    value, then ``header value`` pairs, packed into lines. Cells are text, or (text, rich style)."""
    from rich.console import Group
    from rich.text import Text

    n = len(headers)
    lines = [*rows, *([footer] if footer else [])]
    natural = [max([len(_text_of(r[i])) for r in lines] + [len(h)]) for i, h in enumerate(headers)]
    words = [max([len(w) for w in h.split()] or [1]) for h in headers]
    need = []
    for i, h in enumerate(headers):
        if h in wrap:  # free text: as narrow as its longest word (at least 12), wider when there is room
            longest = max([len(w) for r in lines for w in _text_of(r[i]).split()] + [words[i]])
            need.append(min(natural[i], max(12, longest)))
        else:
            need.append(max([len(_text_of(r[i])) for r in lines] + [words[i]]))
    gaps = 2 * (n - 1)
    if sum(need) + gaps <= width:
        widths = list(need)
        room = width - sum(need) - gaps
        for i, h in enumerate(headers):  # free text first, then headers that would wrap
            if h in wrap and room > 0:
                extra = min(room, natural[i] - widths[i])
                widths[i] += extra
                room -= extra
        for i in range(n):
            if room > 0 and widths[i] < natural[i]:
                extra = min(room, natural[i] - widths[i])
                widths[i] += extra
                room -= extra
        table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False,
                      show_footer=bool(footer))
        for i, (h, w) in enumerate(zip(headers, widths, strict=True)):
            table.add_column(h, width=w, overflow="fold", justify="right" if h in right else "left",
                             footer=_styled(footer[i]) if footer else "")
        for r in rows:
            table.add_row(*(_styled(c) for c in r))
        return table
    # Too narrow for columns: a block per row.
    out: list[Any] = [Text(title, style="bold")] if title else []
    for r in [*rows, *([footer] if footer else [])]:
        out.append(_styled(r[0], "bold"))
        line = Text("  ")
        for h, c in zip(headers[1:], r[1:], strict=True):
            value = _text_of(c)
            if not value:
                continue
            pair = Text.assemble((h, "dim"), " ", _styled(c))
            if len(line) > 2 and len(line) + 3 + len(pair) > width:
                out.append(line)
                line = Text("  ")
            elif len(line) > 2:
                line.append("   ")
            line.append_text(pair)
        if len(line) > 2:
            out.append(line)
    return Group(*out)


def kv_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True, min_width=max([len(k) for k, _v in rows] or [0]))  # labels stay whole
    table.add_column(overflow="fold")  # values wrap at their spaces
    for k, v in rows:
        table.add_row(k, v)
    return table
