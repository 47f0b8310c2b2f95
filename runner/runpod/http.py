"""The transport under both RunPod APIs: base URL, Bearer key, timeouts, RunPod's error shapes, and
retries with tenacity.

Retried: 429 (waiting what ``Retry-After`` says), 5xx and dropped connections (exponential backoff).
Never retried: 400, 401, 402, 403, 404, 409, 422: repeating them cannot help. A request that creates
something is sent with ``retry=False``: whether a failed create took effect must be checked first
(:mod:`runner.runpod.launch` lists pods by name), or a retry makes a second, billing pod.

Messages name the method, the path and what RunPod said; never a request body or the key."""

from __future__ import annotations

import json as jsonlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_after_delay

from runner.runpod import ENV_API_KEY, base_url
from runner.runpod.errors import (
    AuthError,
    BalanceError,
    Conflict,
    InvalidRequest,
    NoCapacity,
    NotFound,
    RateLimited,
    RunPodError,
    ServerError,
    Unreachable,
    is_capacity_message,
)

#: Tries per request, and the longest any request is retried for.
MAX_TRIES = int(os.environ.get("RUNPOD_MAX_TRIES", "8"))
MAX_RETRY_SECONDS = 180.0
#: Backoff after 5xx and dropped connections: base × 2^n, at most the cap.
BACKOFF_BASE_SECONDS = float(os.environ.get("RUNPOD_BACKOFF_SECONDS", "0.5"))
BACKOFF_CAP_SECONDS = 20.0
#: A Retry-After longer than this is cut to it (a broken header must not park the runner for hours).
RETRY_AFTER_CAP_SECONDS = 60.0
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0


def backoff_seconds(tries: int) -> float:
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, tries - 1))


def wait_for_retry(state: RetryCallState) -> float:
    """Retry-After when RunPod gave one, else exponential backoff."""
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, RateLimited) and error.retry_after is not None:
        return min(RETRY_AFTER_CAP_SECONDS, max(0.0, error.retry_after))
    return backoff_seconds(state.attempt_number)


def retrying(tries: int = MAX_TRIES) -> Retrying:
    return Retrying(retry=retry_if_exception(lambda e: isinstance(e, RunPodError) and e.retryable),
                    wait=wait_for_retry, stop=stop_after_attempt(tries) | stop_after_delay(MAX_RETRY_SECONDS),
                    reraise=True)


class Transport:
    """One API key against one base URL; thread-safe (one requests session per thread)."""

    def __init__(self, api_key: str | None = None, url: str | None = None):
        key = api_key if api_key is not None else os.environ.get(ENV_API_KEY, "")
        if not key:
            raise AuthError(f"no RunPod API key: export {ENV_API_KEY} (RunPod console → Settings → API Keys) "
                            f"and run the command again")
        self._key = key
        self.base_url = (url or base_url()).rstrip("/")
        self._local = threading.local()

    def __repr__(self) -> str:  # never the key
        return f"Transport({self.base_url})"

    @property
    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = requests.Session()
            session.headers.update({"Authorization": f"Bearer {self._key}", "Accept": "application/json",
                                    "User-Agent": "spot-runner"})
            self._local.session = session
        return session

    # --- requests --------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                retry: bool = True, timeout: float = READ_TIMEOUT) -> Any:
        """Send a request; the decoded JSON answer (None for an empty one). Raises a :class:`RunPodError`."""
        if not retry:
            return self._once(method, path, json, params, timeout)
        for attempt in retrying():
            with attempt:
                return self._once(method, path, json, params, timeout)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(self, method: str, path: str, json: Any, params: dict[str, Any] | None, timeout: float) -> Any:
        import requests

        what = f"{method} {path}"
        try:
            response = self._session.request(method, self.base_url + path, json=json, params=params,
                                             timeout=(CONNECT_TIMEOUT, timeout))
        except requests.RequestException as e:
            raise Unreachable(f"RunPod did not answer {what} ({type(e).__name__}: {_short(e)}); check the network "
                              f"and {self.base_url}") from None
        if response.status_code >= 400:
            raise error_for(what, response.status_code, response.headers, response.content)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ServerError(f"RunPod answered {what} with something that is not JSON "
                              f"({response.headers.get('Content-Type', 'no content type')})",
                              status=response.status_code) from None

    def stream_events(self, path: str, params: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None,
                      read_timeout: float = READ_TIMEOUT) -> Iterator[dict[str, str]]:
        """A Server-Sent Events answer (the pod log), event by event: ``{"id": …, "data": …}`` (multi-line
        ``data`` joined with newlines). Retried only before the first byte; ends quietly when the stream
        is closed or stays silent for ``read_timeout`` seconds."""
        import requests
        import urllib3

        for attempt in retrying(4):
            with attempt:
                try:
                    response = self._session.get(self.base_url + path, params=params, headers=headers or {},
                                                 stream=True, timeout=(CONNECT_TIMEOUT, read_timeout))
                except requests.RequestException as e:
                    raise Unreachable(f"RunPod did not answer GET {path}: {_short(e)}") from None
                if response.status_code >= 400:
                    raise error_for(f"GET {path}", response.status_code, response.headers, response.content)
        # read1: whatever has arrived, at once (iter_lines would wait for a whole chunk of bytes, so a
        # quiet trainer's last line would show only after the next ones).
        pending, event = b"", {}
        try:
            while chunk := response.raw.read1(1 << 16):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.rstrip(b"\r").decode("utf-8", "replace")
                    if not line:  # a blank line ends an event
                        if "data" in event:
                            yield event
                        event = {}
                        continue
                    if line.startswith(":"):  # a comment (keep-alive)
                        continue
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        event["data"] = f"{event['data']}\n{value}" if "data" in event else value
                    elif name in ("id", "event"):
                        event[name] = value
            if "data" in event:
                yield event
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError):
            return  # the stream ended under us (or went quiet): the caller decides whether to reopen it
        finally:
            response.close()


def error_for(what: str, status: int, headers: Any, body: bytes) -> RunPodError:
    """The exception for an HTTP error answer, with RunPod's own words (problem+json ``detail``)."""
    said = _problem_text(body)
    tail = f": {said}" if said else ""
    if status == 429:
        return RateLimited(f"RunPod rate-limited {what}{tail}", retry_after=_retry_after(headers), status=status,
                           said=said)
    if status >= 500:
        return ServerError(f"RunPod failed {what} with HTTP {status}{tail}", status=status, said=said)
    if status == 401:
        return AuthError(f"RunPod refused the API key for {what} (HTTP 401{tail}); check {ENV_API_KEY}",
                         status=status, said=said)
    if status == 403:
        return AuthError(f"RunPod forbade {what} (HTTP 403{tail}); the API key needs read/write permission "
                         f"for pods", status=status, said=said)
    if status == 402:
        return BalanceError(f"RunPod refused {what}: insufficient balance (HTTP 402{tail}); add credit in the "
                            f"RunPod console, then run `python -m runner watch`", status=status, said=said)
    if status == 404:
        return NotFound(f"RunPod has no such thing for {what} (HTTP 404{tail})", status=status, said=said)
    if status == 409:
        return Conflict(f"RunPod refused {what} in the pod's current status (HTTP 409{tail})", status=status,
                        said=said)
    if status == 400 and is_capacity_message(said):
        return NoCapacity(f"RunPod has no capacity for {what}{tail}", status=status, said=said)
    return InvalidRequest(f"RunPod rejected {what} (HTTP {status}{tail})", status=status, said=said)


def _problem_text(body: bytes) -> str:
    """``title: detail`` and the field errors of a problem+json body, or a short plain body."""
    if not body:
        return ""
    try:
        problem = jsonlib.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip()
    if not isinstance(problem, dict):
        return ""
    parts = [str(problem[k]) for k in ("detail",) if problem.get(k)] or [str(problem.get("title") or "")]
    errors = problem.get("errors") or []
    for err in errors[:5] if isinstance(errors, list) else []:
        if isinstance(err, dict):  # not RunPod's documented shape (a list of strings), read all the same
            field = err.get("field") or err.get("path") or ""
            parts.append(f"{field}: {err.get('message') or err.get('detail') or ''}".strip(": "))
        else:  # "$.args: ['a'] is not of type 'string'"
            parts.append(str(err))
    return "; ".join(p for p in parts if p)[:600]


def _retry_after(headers: Any) -> float | None:
    value = (headers or {}).get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        import time
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__
