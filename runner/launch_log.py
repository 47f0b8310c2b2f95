"""What happened on this machine for each attempt: the image's build, push and pull, the launch, and
why it failed. Kept as ``<state dir>/attempts/<attempt id>/launch.log``, so ``runner logs`` shows it
without any provider's key (a pod's own output needs RunPod's API; a failed build or push happened
here and never reached a pod).

Lines are plain text with the time in front; every line goes through the supervisor's redaction
first, so a secret value never lands here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from runner import paths

LAUNCH_LOG = "launch.log"


def log_path(attempt_id: str) -> Path:
    return paths.attempts_dir() / attempt_id / LAUNCH_LOG


class LaunchLog:
    """Appends an attempt's launch lines; ``redact`` cleans each one before it is written."""

    def __init__(self, attempt_id: str, redact: Callable[[str], str] = lambda text: text):
        self.path = log_path(attempt_id)
        self._redact = redact

    def __call__(self, text: str) -> None:
        self.write(text)

    def write(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        lines = [line for line in self._redact(str(text)).splitlines() if line.strip()] or [""]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(f"{stamp} {line}\n" for line in lines)


class Tee:
    """A console for the image code (``print`` with rich markup) that also writes each line, as plain
    text, to an attempt's launch log: what the terminal shows is what the log keeps."""

    def __init__(self, echo: Any, log: Callable[[str], None] | None):
        self.echo = echo
        self.log = log

    def print(self, text: Any = "", *args: Any, **kwargs: Any) -> None:
        if self.echo is not None:
            self.echo.print(text, *args, **kwargs)
        if self.log is not None:
            self.log(plain(str(text)))


def tee(echo: Any, log: Callable[[str], None] | None) -> Any:
    """``echo`` itself when there is no log to write to."""
    return echo if log is None else Tee(echo, log)


def plain(markup: str) -> str:
    """Rich markup as the text it shows."""
    from rich.errors import MarkupError
    from rich.text import Text

    try:
        return Text.from_markup(markup).plain
    except MarkupError:
        return markup


def read(attempt_id: str, offset: int = 0) -> tuple[list[str], int]:
    """The launch log's lines from byte ``offset`` on (complete lines only), and the offset after them."""
    try:
        with open(log_path(attempt_id), "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    return complete.decode("utf-8", "replace").splitlines(), offset + len(complete)


def follow(attempt_id: str, until: Callable[[], bool], every_s: float = 0.3) -> Iterator[str]:
    """The launch log's lines as they are written, until ``until()`` says the launch is over (then the rest)."""
    offset = 0
    while True:
        done = until()
        lines, offset = read(attempt_id, offset)
        yield from lines
        if done:
            return
        time.sleep(every_s)
