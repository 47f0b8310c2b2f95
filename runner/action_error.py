"""The refusal of an action (:mod:`runner.actions`, :mod:`runner.remote.client`): kept apart so that the
modules that refuse can import it without importing each other."""

from __future__ import annotations


class ActionError(Exception):
    """The action cannot be done: the message says why and what to do; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
