"""``runner logs JOB``: what happened to a job, attempt by attempt. First what happened on this machine
(its launch log: the image's build, push and pull, the launch, why it failed), which needs no
provider's key; then the attempt's own output from its backend (the trainer's log, the container's, the
pod's). When the backend cannot be asked (no RunPod key here), the local part is shown all the same and
the end says what is missing."""

from __future__ import annotations

import sys
import time
from typing import Any

from runner import launch_log
from runner import state as st


def print_logs(state: st.State, row: st.JobRow, follow: bool, attempt: int | None) -> None:
    """Every attempt's logs; with ``follow``, new lines, through relaunches, until the job ends."""
    from runner.backends import BackendUnavailable, get_backend
    from runner.show import EXIT_DETACHED

    backend, unavailable = None, None
    try:
        backend = get_backend(row.backend)
    except BackendUnavailable as e:
        unavailable = str(e)
    looked = [0.0]

    def active() -> bool:
        """Whether the job still runs; one supervised elsewhere is refreshed from its snapshot first."""
        if row.remote and time.monotonic() - looked[0] > 2:
            from runner.remote.client import refresh

            refresh(state, [state.job(row.id)])
            looked[0] = time.monotonic()
        return state.job(row.id).active

    shown: set[str] = set()
    unread: list[int] = []  # attempts whose backend output could not be read
    background = _background_log(row)
    try:
        if background:
            print(f"── launched in the background: {background} ──", flush=True)
        while True:
            for a in state.attempts(row.id):
                if a.id in shown or (attempt is not None and a.number != int(attempt)):
                    continue
                print(f"── attempt {a.number} ({a.id}) ──", flush=True)
                launched = lambda a=a: (not follow or state.attempt(a.id).state != st.LAUNCHING  # noqa: E731
                                        or not active())
                for line in launch_log.follow(a.id, launched):
                    print(line, flush=follow)
                a = state.attempt(a.id)
                if a.handle is None:
                    if a.state == st.ENDED and not launch_log.read(a.id)[0]:
                        print(f"(it never started: {a.detail})")  # recorded before launch logs were kept
                elif backend is None:
                    unread.append(a.number)
                else:
                    live = follow and a.state != st.ENDED
                    for line in backend.logs(a.handle, follow=live, until=lambda: not active()):
                        print(line, flush=live)
                shown.add(a.id)
            if not follow or not active():
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        raise SystemExit(EXIT_DETACHED) from None
    if not shown:
        print(f"{row.id} has no output yet ({row.state}).", file=sys.stderr)
    if unread:
        which = ", ".join(map(str, unread))
        print(f"The output of attempt{'s' if len(unread) > 1 else ''} {which} on {row.backend} is not shown: "
              f"{unavailable}", file=sys.stderr)


def _background_log(row: Any) -> str | None:
    """The log of the process that launched the job in the background (``submit --detach``), if any."""
    path = getattr(row, "launcher_log", None)
    return path or None
