"""Download one S3 object as fast as the link allows, into memory or into a file.

Resuming from an empty disk is mostly this download, so each choice here was measured
(``bench/bench_s3_resume.py``, BENCHMARKS.md):

* **No HEAD.** The first GET asks for the whole object; its answer gives the size and the ETag.
  Every later request for the same object names that ETag (``If-Match``), so all bytes come from
  one version of it; a replaced object answers 412 and the caller starts again.
* **One stream first, more only where they pay.** Object stores cap each TCP connection (S3:
  roughly 50-100 MB/s), so there parallel ranged GETs multiply the speed; but a fast link (a store
  in the same zone, loopback) is already full with one stream, and extra ones only add contention.
  The download therefore starts with one stream, measures it, and while the rest would still take
  a while, adds ranged GETs for the *end* of the object, doubling the streams only as long as each
  doubling raises the total rate. The first stream keeps reading from the front until it meets the
  parts claimed from the back, so nothing is read twice.
* **No copies.** Bytes go from the socket straight into their destination (``readinto`` on the
  response's underlying ``http.client`` stream; a huge-page mapping for :class:`MemoryBuffer`), and
  are hashed right after each read while they are still in the CPU's cache.
* **A dropped connection costs only what was not yet received**: a stream that fails is retried
  (the caller's retry policy) from the byte where it stopped.

Torch-free: only :mod:`trainer.storage_s3` uses it.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from botocore.exceptions import ClientError, IncompleteReadError

log = logging.getLogger("trainer")

T = TypeVar("T")

MiB = 1 << 20
#: Bytes read (and hashed) per call: big enough that a call costs little, small enough to stay in cache.
CHUNK = MiB
#: How long each measurement of the rate lasts (at least; longer on a link with a slow first byte).
WINDOW_S = 0.2
#: Streams are added only while the rest of the download at the current rate would take longer.
WORTH_PARALLEL_S = 0.5
#: A doubling of the streams must raise the total rate by this factor to be kept going.
GAIN = 1.25
#: The streams count as steady once two windows in a row are within this factor of each other.
RAMP = 1.5
#: A first stream that keeps its thread busy more than this share of the time is limited by this
#: machine (copying, hashing), not by the link: more streams would only compete for the same cores.
BUSY = 0.5
#: A ranged GET is at most this long, and at most what one stream receives in PART_S at the rate
#: measured (so that streams added later still find work to share), and smaller near the end (a
#: share of what is left per stream, so that the streams finish together).
MAX_PART = 16 * MiB
PART_S = 0.3


class Hash(Protocol):
    def update(self, data: Any, /) -> None: ...
    def hexdigest(self) -> str: ...


class Destination(Protocol):
    """Where the bytes go. ``receive`` reads up to ``n`` bytes of ``stream`` into place at ``offset``
    and returns them as a buffer (empty at the end of the stream); ``read`` gives back bytes already
    received (to hash parts in order)."""

    def open(self, size: int) -> None: ...
    def receive(self, stream: Any, offset: int, n: int, scratch: memoryview) -> memoryview: ...
    def read(self, offset: int, n: int) -> Any: ...


class MemoryBuffer:
    """A download into this process's memory, ``buffer`` (an anonymous mapping the object's size).

    Why a mapping of its own: the kernel can back it with 2 MiB pages (MADV_HUGEPAGE; where
    transparent huge pages are on "madvise" or "always"), so receiving 250 MB into it takes ~130 page
    faults instead of ~64,000, which on a virtual machine cost as much CPU as the copy itself; and
    tensors made from it (``torch.frombuffer``) share its pages, so nothing is copied again. The
    mapping lives as long as anything refers to it: :meth:`close` only drops this object's hold."""

    def __init__(self) -> None:
        self.size = 0
        self.buffer: mmap.mmap | None = None
        self._view: memoryview | None = None

    def open(self, size: int) -> None:
        self.close()  # a fresh start after a replaced object
        self.size = size
        if size:
            self.buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            with contextlib.suppress(AttributeError, OSError):  # no THP here: 4 KiB pages, still correct
                self.buffer.madvise(mmap.MADV_HUGEPAGE)
            self._view = memoryview(self.buffer)

    def receive(self, stream: Any, offset: int, n: int, scratch: memoryview) -> memoryview:
        assert self._view is not None
        target = self._view[offset:offset + n]
        got = stream.readinto(target)
        return target[:got or 0]

    def read(self, offset: int, n: int) -> memoryview:
        assert self._view is not None
        return self._view[offset:offset + n]

    def close(self) -> None:
        self._view = None
        self.buffer = None

    def __enter__(self) -> MemoryBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileDestination:
    """A download into an open file: each read lands in a per-stream scratch buffer and is written
    with ``pwrite`` (so a full disk is an ``OSError``, never a SIGBUS from a mapping)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def open(self, size: int) -> None:
        os.ftruncate(self.fd, 0)
        os.ftruncate(self.fd, size)

    def receive(self, stream: Any, offset: int, n: int, scratch: memoryview) -> memoryview:
        got = stream.readinto(scratch[:n]) or 0
        view = scratch[:got]
        done = 0
        while done < got:
            done += os.pwrite(self.fd, view[done:], offset + done)
        return view

    def read(self, offset: int, n: int) -> bytes:
        return os.pread(self.fd, n, offset)


@dataclass
class Fetched:
    """What a download got: the object's size and ETag, the hex digest of its bytes (when asked for),
    the most streams that ran at once and how many ranged GETs the added streams made."""

    size: int
    etag: str
    digest: str | None
    streams: int = 1
    ranged_parts: int = 0


class Replaced(Exception):
    """The object changed while it was being read (a later request's If-Match failed): start again."""


@dataclass
class _Worker:
    """A stream added for the end of the object. ``ready`` once it has received its first bytes (or
    found nothing to claim); ``retired``: it claims no further part."""

    thread: threading.Thread = field(default_factory=threading.Thread)
    ready: bool = False
    retired: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Part:
    offset: int
    length: int
    received: int = 0
    done: threading.Event = field(default_factory=threading.Event)


def _raw_stream(body: Any) -> Any:
    """The response's ``http.client`` stream under botocore's and urllib3's wrappers: its ``readinto``
    reads from the socket straight into the caller's buffer. (urllib3's own ``readinto`` reads into
    a new buffer and copies it twice; on a fast link those copies cost a third of the download.)
    Falls back to the public, slower one if a future urllib3 moves the attribute."""
    raw = getattr(body, "_raw_stream", body)
    fp = getattr(raw, "_fp", None)
    return fp if fp is not None and hasattr(fp, "readinto") else raw


class Download:
    """One object, ``key`` in ``bucket``, into ``dest``. ``call(what, fn)`` runs one request under
    the caller's retry policy; ``new_hash`` makes the hash of the bytes (None: no digest); ``slots``
    bounds the streams added by all the downloads that share it (several files fetched at once
    must not open ``max_streams`` connections each)."""

    def __init__(self, client: Any, bucket: str, key: str, dest: Destination, *,
                 call: Callable[[str, Callable[[], T]], T], max_streams: int,
                 new_hash: Callable[[], Hash] | None = None, name: str | None = None,
                 slots: threading.Semaphore | None = None) -> None:
        self.client, self.bucket, self.key, self.dest = client, bucket, key, dest
        self.call, self.max_streams, self.new_hash = call, max(1, max_streams), new_hash
        self.name = name or key
        self.slots = slots  # shared by the downloads of one client: added streams in all of them
        self.size = 0
        self.etag = ""
        self._lock = threading.Lock()
        self._front = 0  # the first stream has claimed [0, _front)
        self._back = 0  # ranged parts have claimed [_back, size)
        self._parts: list[_Part] = []
        self._received = 0  # by every stream, for the rate
        self.part_hint = MAX_PART  # bytes per ranged GET: what one stream gets through in PART_S
        self._workers: list[_Worker] = []  # every stream added, retired ones too
        self._errors: list[BaseException] = []
        self._stop = threading.Event()
        self._most_streams = 1

    # --- the first stream: the whole object from the front ---------------------------------------
    def run(self) -> Fetched | None:
        """The download; None when the object does not exist. Raises :class:`Replaced` when the
        object changed underneath, or the last error of a request that kept failing."""
        scratch = memoryview(bytearray(CHUNK))
        digest = self.new_hash() if self.new_hash else None
        pos = 0  # the first stream has received [0, pos)
        started = [False]
        ttfb = [0.0]

        def attempt() -> None:
            nonlocal pos
            t0 = time.monotonic()
            if not started[0]:
                try:
                    resp = self.client.get_object(Bucket=self.bucket, Key=self.key)
                except ClientError as e:
                    if _is_missing(e):
                        raise _Missing from None
                    raise
                self.size = int(resp["ContentLength"])
                self.etag = resp["ETag"]
                self.dest.open(self.size)
                with self._lock:
                    self._front, self._back = 0, self.size
                started[0] = True
                ttfb[0] = time.monotonic() - t0
            else:  # a retry after a dropped connection: the rest, from the same version
                with self._lock:
                    end = self._back
                if pos >= end:
                    return
                resp = self._ranged_get(pos, end)
            with contextlib.closing(resp["Body"]) as body:
                stream = _raw_stream(body)
                controller = _Controller(self, ttfb[0])
                while True:
                    with self._lock:
                        n = min(CHUNK, self._back - pos)
                        self._front = pos + max(n, 0)
                    if n <= 0:
                        return
                    view = self.dest.receive(stream, pos, n, scratch)
                    if not len(view):
                        raise IncompleteReadError(actual_bytes=pos, expected_bytes=self.size)
                    if digest is not None:
                        digest.update(view)
                    pos += len(view)
                    with self._lock:
                        self._received += len(view)
                    controller.tick()
                    if self._errors:
                        return

        try:
            self.call(f"get {self.name}", attempt)
        except _Missing:
            return None
        except BaseException:
            self._stop.set()
            self._join()
            raise
        if self._errors:
            self._stop.set()
        # The parts claimed from the back, in order, hashed as each one lands.
        for part in sorted(self._parts, key=lambda p: p.offset):
            while not part.done.wait(0.1):
                if self._errors or not any(w.thread.is_alive() for w in self._workers):
                    break
            if self._errors or not part.done.is_set():
                break
            if digest is not None:
                end, at = part.offset + part.length, part.offset
                while at < end:
                    n = min(8 * MiB, end - at)
                    digest.update(self.dest.read(at, n))
                    at += n
        self._join()
        if self._errors:
            raise self._errors[0]
        return Fetched(self.size, self.etag, digest.hexdigest() if digest else None, self._most_streams,
                       len(self._parts))

    # --- streams added for the end of the object --------------------------------------------------
    def add_streams(self, count: int) -> int:
        """Start up to ``count`` more streams (within ``max_streams``); returns how many started."""
        started = 0
        while started < count and self.streams < self.max_streams:
            if self.slots is not None and not self.slots.acquire(blocking=False):
                break  # other downloads of this client hold the connections it may add
            worker = _Worker()
            worker.thread = threading.Thread(target=self._worker, args=(worker,), daemon=True,
                                             name=f"s3-get-{len(self._workers) + 1}")
            self._workers.append(worker)
            worker.thread.start()
            started += 1
        self._most_streams = max(self._most_streams, self.streams)
        return started

    def retire_streams(self, keep: int) -> None:
        """Let all but ``keep`` streams (the first one included) stop once their current part is in."""
        for worker in self._active()[max(0, keep - 1):]:
            worker.retired.set()

    def _active(self) -> list[_Worker]:
        return [w for w in self._workers if not w.retired.is_set()]

    @property
    def streams(self) -> int:
        """The streams at work or about to be: the first one and the added ones not retired."""
        return 1 + len(self._active())

    def ready(self) -> bool:
        """Whether every added stream has received its first bytes (or found nothing to claim)."""
        return all(w.ready for w in self._active())

    def unclaimed(self) -> int:
        with self._lock:
            return self._back - self._front

    def received(self) -> int:
        with self._lock:
            return self._received

    def _claim(self, worker: _Worker) -> _Part | None:
        if worker.retired.is_set():
            return None
        with self._lock:
            left = self._back - self._front
            # Guided: a share of what is left per stream, so the last parts are small and the
            # streams finish together; nothing smaller than a few reads is worth a request.
            n = min(MAX_PART, self.part_hint, left // self.streams)
            if n < CHUNK or self._stop.is_set():
                return None
            self._back -= n
            part = _Part(self._back, n)
            self._parts.append(part)
            return part

    def _worker(self, worker: _Worker) -> None:
        scratch = memoryview(bytearray(CHUNK))
        try:
            while (part := self._claim(worker)) is not None:
                self.call(f"get {self.name} bytes {part.offset}-{part.offset + part.length - 1}",
                          lambda p=part: self._fetch_part(p, scratch, worker))
                part.done.set()
        except _Abandoned:
            return
        except BaseException as e:
            with self._lock:
                self._errors.append(e)
        finally:
            worker.ready = True
            if self.slots is not None:
                self.slots.release()

    def _fetch_part(self, part: _Part, scratch: memoryview, worker: _Worker) -> None:
        # A retry asks for the rest of the part only.
        end = part.offset + part.length
        resp = self._ranged_get(part.offset + part.received, end)
        with contextlib.closing(resp["Body"]) as body:
            stream = _raw_stream(body)
            while part.received < part.length:
                if self._stop.is_set():
                    raise _Abandoned(self.key)
                at = part.offset + part.received
                view = self.dest.receive(stream, at, min(CHUNK, end - at), scratch)
                if not len(view):
                    raise IncompleteReadError(actual_bytes=part.received, expected_bytes=part.length)
                part.received += len(view)
                with self._lock:
                    self._received += len(view)
                worker.ready = True

    def _ranged_get(self, start: int, end: int) -> Any:
        """GET bytes [start, end) of the version being read (412 -> :class:`Replaced`)."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag,
                                          Range=f"bytes={start}-{end - 1}")
        except ClientError as e:
            if _is_replaced(e):
                raise Replaced(self.key) from None
            raise
        if not str(resp.get("ContentRange", "")).startswith(f"bytes {start}-{end - 1}/"):
            raise RuntimeError(f"the S3 store answered bytes {start}-{end - 1} of {self.key} with "
                               f"{resp.get('ContentRange') or 'the whole object'}: it must support Range requests")
        return resp

    def _join(self) -> None:
        for worker in self._workers:
            worker.thread.join()


class _Controller:
    """Decides, from what it measures, how many streams to run (see the module doc).

    Every measurement is one window of steady transfer. The streams running are measured window
    after window until two in a row agree (a new connection, and a store fetching its first
    chunks, start slowly: on a busy machine SeaweedFS can stall for half a second before it runs
    at full speed, which would look like a slow link). Then, while what is left would take a while, the streams
    are doubled, and the window after the new ones have received their first bytes (connection
    set-up is no measure of the link) says whether that paid: if not, they are retired again
    (where more streams do not help they cost: the server's cores, this process's GIL) and the
    same is tried again after a pause that doubles each time, since a busy moment can hide a link
    that more streams would fill. A rise larger than the added streams can explain means the rate
    before was not steady yet: the new streams are retired and the measuring starts over."""

    def __init__(self, download: Download, ttfb: float) -> None:
        self.download = download
        # A window long enough that a new stream's first byte does not dominate it.
        self.window = max(WINDOW_S, 3 * ttfb)
        self.state = "measure"  # measure | wait (added streams starting) | probe | hold
        self.previous = 0.0  # the last window's rate, while measuring
        self.base = 0.0  # the steady rate with base_streams
        self.base_streams = 1
        self.pause = 4 * self.window  # before trying again after a doubling that did not pay
        self.unsteady = 2  # how many times a rise beyond explanation may restart the measuring
        self.since = 0.0  # when the current wait or hold began
        self.done = download.max_streams <= 1
        self._start(time.monotonic())

    def _start(self, now: float) -> None:
        self.t0, self.cpu0, self.bytes0 = now, time.thread_time(), self.download.received()

    def tick(self) -> None:
        if self.done:
            return
        now = time.monotonic()
        d = self.download
        if self.state == "hold":
            if now - self.since < self.pause:
                return
            self.pause *= 2
            self.state, self.previous = "measure", 0.0
            self._start(now)
            return
        if self.state == "wait":
            if not d.ready() and now - self.since < 10 * self.window:
                return
            self.state = "probe"
            self._start(now)
            return
        if now - self.t0 < self.window:
            return
        rate = (d.received() - self.bytes0) / (now - self.t0)
        busy = (time.thread_time() - self.cpu0) / (now - self.t0)
        self._start(now)
        log.debug("get %s: %.0f MB/s over %d stream(s), the first one busy %.0f%% of the time",
                  d.name, rate / 1e6, d.streams, busy * 100)
        if self.state == "measure":
            if not self.previous or not self.previous / RAMP <= rate <= self.previous * RAMP:
                self.previous = rate  # still speeding up (or stalled): measure again
                return
            self.base, self.base_streams = rate, d.streams
            self._grow(now, busy)
            return
        # "probe": the first window with the added streams all receiving
        gain = rate / self.base if self.base > 0 else GAIN
        if gain > RAMP * d.streams / self.base_streams and self.unsteady:
            self.unsteady -= 1
            d.retire_streams(self.base_streams)
            self.state, self.previous = "measure", 0.0
        elif gain < GAIN:
            d.retire_streams(self.base_streams)
            self.state, self.since = "hold", now
        else:
            self.base, self.base_streams = rate, d.streams
            self._grow(now, busy)

    def _grow(self, now: float, busy: float) -> None:
        d = self.download
        if self.base <= 0 or d.unclaimed() / self.base <= WORTH_PARALLEL_S or d.streams >= d.max_streams:
            self.done = True  # too little left to gain from more streams, or no more may run
            return
        if d.streams == 1 and busy > BUSY:
            # The first stream keeps this machine busy: this machine, not the link, is the limit now.
            self.state, self.since = "hold", now
            return
        d.part_hint = max(CHUNK, int(self.base / d.streams * PART_S))
        if not d.add_streams(d.streams):
            self.done = True
            return
        self.state, self.since = "wait", now


class _Missing(Exception):
    """The object is not there (404): not retried, answered as None."""


class _Abandoned(Exception):
    """Another stream failed: this one stops (not retried, not the error reported)."""


def _is_missing(e: ClientError) -> bool:
    err = e.response.get("Error", {}) or {}
    status = (e.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
    return err.get("Code") in ("NoSuchKey", "404") or status == 404


def _is_replaced(e: ClientError) -> bool:
    err = e.response.get("Error", {}) or {}
    status = (e.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode")
    return err.get("Code") == "PreconditionFailed" or status == 412
