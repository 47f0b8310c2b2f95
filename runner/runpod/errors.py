"""What can go wrong talking to RunPod, as exceptions whose message says what RunPod said and what
to do next. None of them ever carries a request body: a pod's env holds secrets."""

from __future__ import annotations

import re

#: RunPod answers "no capacity" as a 400 (REST) or a GraphQL error; only the text tells it apart, and
#: the wording changes. Seen (RUNPOD.md): "There are no longer any instances available with the
#: requested specifications. Please refresh and try again.", "There are no instances currently
#: available", "There are no instances available with the request specifications". Matched loosely:
#: "no" ... "instance(s)" ... "available", in any of those orders and tenses.
_CAPACITY = re.compile(r"\bno\s+(longer\s+)?(any\s+)?(more\s+)?instances?\b[^.]{0,40}\bavailable|"
                       r"\binstances?\b[^.]{0,30}\b(un|not\s+)available|"
                       r"not\s+enough\s+(free\s+)?gpus|insufficient\s+capacity|out\s+of\s+stock|no\s+capacity", re.I)


def is_capacity_message(text: str) -> bool:
    return bool(_CAPACITY.search(text or ""))


class RunPodError(Exception):
    """An answer from RunPod that is not what was asked for. The RunPod client knows nothing of the
    runner's backends: :mod:`runner.backends.runpod` turns these into backend errors."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, said: str = ""):
        super().__init__(message)
        self.status = status
        self.said = said  # RunPod's own words (problem detail or GraphQL message), for messages


class AuthError(RunPodError):
    """401/403: the key is missing, wrong, or lacks the permission."""


class BalanceError(RunPodError):
    """402: the account's balance is too low."""


class NotFound(RunPodError):
    """404: no such pod (terminated, or never there)."""


class Conflict(RunPodError):
    """409: the action is not valid in the pod's current status."""


class InvalidRequest(RunPodError):
    """400 (not capacity) or 422: the request itself is wrong; repeating it cannot help."""


class NoCapacity(RunPodError):
    """No machine with the requested GPU in that cloud right now (or none at the bid allowed)."""


class SpotRefused(RunPodError):
    """RunPod refused a spot (interruptible) request for a reason other than capacity."""


class RateLimited(RunPodError):
    """429: slow down; ``retry_after`` seconds when RunPod said."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(RunPodError):
    """5xx: RunPod failed; the request may or may not have taken effect."""

    retryable = True


class Unreachable(RunPodError):
    """No answer: connection refused or dropped, or a timeout. The request may have taken effect."""

    retryable = True
