"""Where the runner keeps its state on this machine."""

from __future__ import annotations

import os
from pathlib import Path

#: Set to put the whole state (database, logs, local runs) somewhere else; tests point it at a temp dir.
ENV_HOME = "RUNNER_HOME"


def state_dir() -> Path:
    """``$RUNNER_HOME``, else ``$XDG_STATE_HOME/spot-runner``, else ``~/.local/state/spot-runner``."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser().resolve()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg).expanduser().resolve() / "spot-runner"


def db_path() -> Path:
    return state_dir() / "state.db"


def attempts_dir() -> Path:
    """One folder per attempt launched on this machine: its output log and exit record."""
    return state_dir() / "attempts"


def default_runs_dir() -> Path:
    """Run URIs of local jobs that name no ``storage:``."""
    return state_dir() / "runs"
