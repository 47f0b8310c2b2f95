"""The checkpoint manager: one object owns checkpoint policy behind ``load`` / ``save`` / ``flush``.

What a checkpoint holds is decided by the loop (model, optimizer, scaler, EMA, sampler, RNGs, ...);
this module decides when to write, how to write safely and what to keep:

* ``save`` copies the state to CPU memory (the only stall the loop pays) and hands it to one
  background writer. If a newer checkpoint is ready before the previous one was written, the newer
  one wins and the older one is never written.
* Each file is written to a temporary name, fsynced and renamed (or uploaded in one atomic PUT), and
  only then is its checksum sidecar written. Before a file is replaced, its old sidecar is removed,
  so a sidecar always belongs to the bytes beside it: a reader that finds a file without a sidecar,
  or one whose bytes do not match, skips it and falls back to the previous good checkpoint.
* A checkpoint counts as written (``last_written_step``, and ``on_progress`` tells the loop, which
  reports it in ``status.json``) only once it is durable: its file fsynced and published (uploaded,
  with S3) and its checksum written beside it, so that a resume would find it. A write that fails
  leaves the last good checkpoint as it was and reports the error instead.
* A full disk: before a save the free space is checked against the checkpoint's expected size
  (history files beyond the newest are removed early to make room, never the last good one); when
  it is still short, or a write meets ENOSPC, the error is :class:`DiskFull` ("no space left on
  <path>: needed ~N MB, free M MB"), a permanent error: the loop stops at the next step instead of
  training on. Every later save would fail the same way and the disk only fills further (logs,
  events), so steps trained after it could never be saved; the run stays resumable from its last
  good checkpoint once there is room.
* ``load`` takes the newest checkpoint that verifies, with ``torch.load(weights_only=True)``: a
  checkpoint from a shared bucket cannot run code. The checksum record holds ``xxh3_128`` and
  ``sha256`` (:mod:`trainer.checksums`: the fast one is checked; records with only sha256, written
  before, still verify). From S3 the file is downloaded into memory, hashed as it arrives, and
  its tensors are made as views of those bytes, not copies (resume speed: ``bench/bench_s3_resume.py``).
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer import checksums, contract
from trainer.config import Checkpoint as CheckpointPolicy
from trainer.storage import Storage, StorageError, remove_stale_temp_files

log = logging.getLogger("trainer")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of the model: its state minus frozen parameters (for a LoRA run, the
    adapter and any buffers)."""
    # remove_duplicate=False: a frozen tied weight (GPT-2's lm_head is wte) appears in state_dict under
    # both names and must be left out under both, or every LoRA checkpoint carries the embedding.
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def to_cpu_copy(obj: Any, _copies: dict[tuple, torch.Tensor] | None = None) -> Any:
    """A deep copy of ``obj`` with every tensor cloned to CPU: safe to serialise while training goes on.
    Tensors that are one (a GPT's lm_head is its token embedding, under two names) stay one copy, so the
    checkpoint says they are tied and holds them once."""
    copies = {} if _copies is None else _copies
    if isinstance(obj, torch.Tensor):
        if obj.numel() == 0:
            return obj.detach().to("cpu", copy=True)
        same = _place(obj)
        if same not in copies:
            copies[same] = obj.detach().to("cpu", copy=True)
        return copies[same]
    if isinstance(obj, dict):
        return {k: to_cpu_copy(v, copies) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu_copy(v, copies) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu_copy(v, copies) for v in obj)
    return obj


def _place(t: torch.Tensor) -> tuple:
    """Where a tensor's values are: two names with the same place are one tensor (a tied weight)."""
    return t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype


def evaluated_weights(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's model state as the run evaluated it: with EMA on, the averaged weights, under every
    name of a tied weight (the EMA keeps one, under the first name; the checkpoint holds the tensor once)."""
    state = dict(payload["model"])
    averaged = payload.get("ema")
    if not isinstance(averaged, dict):
        return state
    names: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.numel():
            names.setdefault(_place(t), []).append(name)
    for name, value in averaged.items():
        if name in state:
            tied = names.get(_place(state[name]), [name]) if state[name].numel() else [name]
            for alias in tied:
                state[alias] = value
    return state


class DiskFull(StorageError):
    """No room for a checkpoint: the message names the folder, what was needed and what is free."""

    def __init__(self, folder: Path, needed: int, free: int):
        self.folder, self.needed, self.free = folder, needed, free
        super().__init__(
            f"no space left on {folder}: needed ~{_mb(needed)} MB, free {_mb(free)} MB (ENOSPC); free space there, give the "
            f"run a larger disk, or keep fewer checkpoints (train.checkpoint.keep_last)"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f}" if n >= 10e6 else f"{n / 1e6:.1f}"


def free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def state_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (each storage once): about what ``torch.save`` writes."""
    sizes: dict[int, int] = {}  # storage address: its bytes

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            storage = o.untyped_storage()
            sizes.setdefault(storage.data_ptr(), storage.nbytes())
        elif isinstance(o, (dict, list, tuple)):
            for v in o.values() if isinstance(o, dict) else o:
                walk(v)

    walk(obj)
    return sum(sizes.values())


#: Room kept free beyond the checkpoint itself: its checksum, status.json, the log's next lines.
HEADROOM_BYTES = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class _HashingWriter:
    """A write-only file that hashes what passes through, so the checksums cost no second read.

    torch.save turns an exception raised here into its own ("unexpected pos ..."); the OSError is
    kept in ``error`` so that the caller can raise the real one (ENOSPC)."""

    def __init__(self, f):
        self.f, self.hashes, self.size = f, checksums.Both(), 0
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            written = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.hashes.update(data)
        self.size += len(data)
        return written

    def flush(self) -> None:
        self.f.flush()


def _checksum_record(digests: dict[str, str], size: int, step: int, source: str) -> bytes:
    return json.dumps({**digests, "size": size, "step": step, "source": source}).encode()


def sha256_file(path: Path) -> tuple[str, int]:
    return checksums.file_digest(path, checksums.SHA256)


@dataclass
class _Job:
    step: int
    state: dict[str, Any]
    best: bool


class CheckpointManager:
    def __init__(self, storage: Storage, policy: CheckpointPolicy):
        self.storage, self.policy = storage, policy
        self._every_minutes = policy.minutes()  # `auto` resolved here, where the trainer runs
        self.staging = storage.work_dir / contract.CHECKPOINT_DIR
        self.staging.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temp_files(self.staging)
        if removed:
            log.info("removed %d partial checkpoint file(s) left by a killed process", removed)
        self._last_save_time = time.monotonic()
        self._cond = threading.Condition()
        self._pending_latest: _Job | None = None
        self._pending_best: _Job | None = None
        self._busy = False
        self._closed = False
        self._deadline_missed = False
        #: The newest checkpoint known durable: this run's own, or the one it resumed from (``load``).
        self.last_written_step: int | None = None
        self.last_error: BaseException | None = None
        #: Called on the writer's thread after each write: (newest durable step, the error or None).
        self.on_progress: Callable[[int | None, str | None], None] | None = None
        self._last_size = 0
        self.superseded = 0  # snapshots that a newer one replaced before they were written
        self._prefetch: _Prefetch | None = None
        self.last_stall_s = 0.0
        self._thread = threading.Thread(target=self._writer, name="checkpoint-writer", daemon=True)
        self._thread.start()

    # --- policy ---------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        p = self.policy
        if p.every_steps and step % p.every_steps == 0:
            return True
        return bool(self._every_minutes) and time.monotonic() - self._last_save_time >= self._every_minutes * 60

    # --- saving ---------------------------------------------------------------------------------
    def save(self, step: int, state: dict[str, Any], *, best: bool = False) -> float:
        """Queue a checkpoint of ``state`` at ``step``; returns the seconds the caller was stalled."""
        t0 = time.perf_counter()
        job = _Job(step, to_cpu_copy(state), best)
        with self._cond:
            if self._pending_latest is not None:
                self.superseded += 1
            self._pending_latest = job
            if best:
                self._pending_best = job
            self._cond.notify_all()
        self._last_save_time = time.monotonic()
        self.last_stall_s = time.perf_counter() - t0
        return self.last_stall_s

    @property
    def permanent_error(self) -> BaseException | None:
        """The last write's error when no later write can succeed either (the bucket is gone, the
        keys were revoked, the disk is full): training on would spend money on steps that can never
        be saved."""
        return self.last_error if isinstance(self.last_error, StorageError) else None

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written. False on timeout or if the last write failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending_latest or self._pending_best or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._deadline_missed = True
                    return False
                self._cond.wait(remaining)
            return self.last_error is None

    def close(self, timeout: float | None = None) -> bool:
        if self._deadline_missed and timeout is None:
            # A flush already ran out of time (SIGTERM with a stalled store): waiting again without a
            # limit would turn that deadline into none. The writer is a daemon and dies with us.
            timeout = 0
        ok = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        return ok

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not (self._pending_latest or self._pending_best or self._closed):
                    self._cond.wait()
                if self._closed and not (self._pending_latest or self._pending_best):
                    return
                latest, best = self._pending_latest, self._pending_best
                self._pending_latest = self._pending_best = None
                self._busy = True
            try:
                # A best snapshot that a newer one superseded goes first, for the same reason as in
                # _write_staged: the newer one's progress already counts it as the best.
                if best is not None and best is not latest:
                    self._write(best, also_best=True, history=False)
                if latest is not None:
                    self._write(latest, also_best=best is latest)
                self.last_error = None
                self._tell(None)
            except Exception as e:  # keep training; the error surfaces at flush and in the log
                self.last_error = e
                log.error("checkpoint write failed: %s", e)
                self._tell(f"checkpoint of step {(latest or best).step} not written: {e}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _tell(self, error: str | None) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(self.last_written_step, error)
            except Exception as e:  # reporting must never break the writer
                log.warning("could not report checkpoint progress: %s", e)

    def _write(self, job: _Job, *, also_best: bool, history: bool = True) -> None:
        name = f"step-{job.step:09d}.pt" if history else "best.pt"
        staged = self.staging / f".{name}.{os.getpid()}.tmp"
        needed = max(state_bytes(job.state), self._last_size) + HEADROOM_BYTES
        try:
            self._make_room(needed)
            self._write_staged(job, staged, also_best=also_best, history=history)
        except OSError as e:
            if e.errno not in _NO_SPACE:
                raise
            staged.unlink(missing_ok=True)  # what it took is free again, and counted so
            folder = Path(e.filename).parent if isinstance(e.filename, str) else self.staging
            raise DiskFull(folder, needed, free_bytes(folder)) from None
        finally:
            # Published files were moved away; one left here is a failed upload, and the next attempt
            # writes a newer state anyway: do not let failed uploads pile up in the cache.
            staged.unlink(missing_ok=True)

    def _make_room(self, needed: int) -> None:
        """Refuse a save the disk has no room for before writing any of it: a checkpoint that fills
        the disk halfway would take the room the status and the log need. History files older than
        the newest good checkpoint go early when that makes enough room (never the newest good one)."""
        free = free_bytes(self.staging)
        if free >= needed:
            return
        newest_good = self.last_written_step
        older: list[tuple[str, int]] = []
        # With S3 the disk holds only the one being written (the staging copy): nothing to remove.
        for key in self.storage.list(contract.CHECKPOINT_DIR + "/") if self.storage.is_local else []:
            step = contract.parse_step_checkpoint(key)
            path = self.storage.local_path(key)
            if step is None or newest_good is None or step >= newest_good or path is None:
                continue
            with contextlib.suppress(OSError):
                st = path.stat()
                older.append((key, st.st_size if st.st_nlink == 1 else 0))  # a hard link frees nothing
        if free + sum(size for _, size in older) >= needed:
            for key, _ in sorted(older):
                log.warning("only %s MB free in %s: removing %s early to make room for the next checkpoint",
                            _mb(free), self.staging, key)
                self.storage.delete(key + contract.CHECKSUM_SUFFIX)
                self.storage.delete(key)
                free = free_bytes(self.staging)
                if free >= needed:
                    return
        raise DiskFull(self.staging, needed, free)

    def _write_staged(self, job: _Job, staged: Path, *, also_best: bool, history: bool) -> None:
        with open(staged, "wb") as raw:
            out = _HashingWriter(raw)
            try:
                torch.save(job.state, out)
                raw.flush()
            except Exception:
                if out.error is not None:  # the real cause, not torch's "unexpected pos"
                    raise out.error from None
                raise
            os.fsync(raw.fileno())
        digests, size = out.hashes.record(), out.size
        self._last_size = size
        if not history:
            self._publish_file(staged, contract.BEST, digests, size, job.step)
            return
        key = contract.step_checkpoint(job.step)
        # best.pt before the step's own file: a resume takes the newest step file, and the progress in it
        # says this step was the best, so a kill between the two must not leave an older best.pt behind.
        if also_best:
            self._publish_file(staged, contract.BEST, digests, size, job.step)
            self._publish_copy(contract.BEST, key, digests, size, job.step)
        else:
            self._publish_file(staged, key, digests, size, job.step)
        # Durable now: fsynced, published and its checksum beside it, so a resume finds it.
        self.last_written_step = job.step
        self._tell(None)
        self._publish_copy(key, contract.LATEST, digests, size, job.step)
        self._apply_retention()

    def _publish_file(self, staged: Path, key: str, digests: dict[str, str], size: int, step: int) -> None:
        sidecar = key + contract.CHECKSUM_SUFFIX
        self.storage.delete(sidecar)
        self.storage.put_file(staged, key, sha256=digests[checksums.SHA256], move=True)
        self.storage.put_bytes(sidecar, _checksum_record(digests, size, step, key))

    def _publish_copy(self, src: str, key: str, digests: dict[str, str], size: int, step: int) -> None:
        sidecar = key + contract.CHECKSUM_SUFFIX
        self.storage.delete(sidecar)
        self.storage.copy(src, key)
        self.storage.put_bytes(sidecar, _checksum_record(digests, size, step, src))

    def _apply_retention(self) -> None:
        steps = sorted(
            (s, k) for k in self.storage.list(contract.CHECKPOINT_DIR + "/")
            if (s := contract.parse_step_checkpoint(k)) is not None
        )
        for _, key in steps[: -self.policy.keep_last]:
            # The sidecar goes first: readers skip a file with no checksum, so this never looks torn.
            self.storage.delete(key + contract.CHECKSUM_SUFFIX)
            self.storage.delete(key)

    # --- loading --------------------------------------------------------------------------------
    def load(self) -> tuple[dict[str, Any], str] | None:
        """The newest checkpoint under the run URI that verifies, and its key; None for a fresh run."""
        self._prefetch = _Prefetch.start(self.storage)
        try:
            return self._load()
        finally:
            if self._prefetch is not None:
                self._prefetch.close()
                self._prefetch = None

    def _load(self) -> tuple[dict[str, Any], str] | None:
        keys = set(self.storage.list(contract.CHECKPOINT_DIR + "/"))
        candidates = [k for k in keys if k == contract.LATEST or contract.parse_step_checkpoint(k) is not None]
        records: list[tuple[int, bool, str, dict]] = []
        # latest.pt is normally the newest: when its record says so, it is tried before the other
        # records are read (each one a request to a remote store, on the resume's critical path).
        if contract.LATEST in candidates:
            candidates.remove(contract.LATEST)
            latest = self._record(contract.LATEST)
            newest_named = max((contract.parse_step_checkpoint(k) or 0 for k in candidates), default=-1)
            if latest is not None and latest[0] >= newest_named:
                found = self._try(*latest)
                if found is not None:
                    return found
                records.append((latest[0], True, contract.LATEST, {}))  # tried: not again
            elif latest is not None:
                records.append(latest)
        records += [r for key in candidates if (r := self._record(key)) is not None]
        for step, _, key, record in sorted(records, key=lambda r: r[:3], reverse=True):
            if record and (found := self._try(step, key == contract.LATEST, key, record)) is not None:
                return found
        if records:
            log.error("no checkpoint under %s verified; starting from scratch", self.storage.uri)
        return None

    def load_key(self, key: str) -> dict[str, Any] | None:
        """The checkpoint at ``key`` (``checkpoints/best.pt``) when it is there and verifies, else None."""
        found = self._record(key, missing_ok=True)
        return None if found is None else self._load_verified(key, found[3])

    def _record(self, key: str, missing_ok: bool = False) -> tuple[int, bool, str, dict] | None:
        """``(step, is latest.pt, key, checksum record)`` of ``key``; None (and why, in the log, unless
        ``missing_ok`` and it has none) when it has no readable record."""
        raw = self.storage.get_bytes(key + contract.CHECKSUM_SUFFIX)
        if raw is None:
            if not missing_ok:
                log.warning("skipping %s: it has no checksum (a write that did not finish)", key)
            return None
        try:
            record = json.loads(raw)
            checksums.pick(record)
            return int(record["step"]), key == contract.LATEST, key, record
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("skipping %s: its checksum file is unreadable", key)
            return None

    def _try(self, step: int, _latest: bool, key: str, record: dict) -> tuple[dict[str, Any], str] | None:
        payload = self._load_verified(key, record)
        if payload is None:
            return None
        if int(payload.get("step", -1)) != step:
            log.warning("skipping %s: it holds step %s, its checksum says %d", key, payload.get("step"), step)
            return None
        algo, digest = checksums.pick(record)
        log.info("resuming from %s (step %d, %s %s… verified)", key, step, algo, digest[:12])
        self.last_written_step = step
        return payload, key

    def _load_verified(self, key: str, record: dict) -> dict[str, Any] | None:
        algo, expected = checksums.pick(record)
        path = self.storage.local_path(key)
        fetched: tuple[Any, Any] | None = None
        downloaded: Path | None = None
        try:
            if path is not None:
                digest, size = checksums.file_digest(path, algo)
            elif key == contract.LATEST and self._prefetch is not None and (
                    fetched := self._prefetch.take(algo, expected, record["size"])) is not None:
                digest, size = fetched[1].digest, fetched[1].size
            elif (get_in_memory := getattr(self.storage, "get_in_memory", None)) is not None:
                # S3: into memory, hashed while it arrives, then loaded without a copy.
                fetched = get_in_memory(key, checksums.maker(algo))
                if fetched is None:
                    log.warning("skipping %s: it vanished while resuming", key)
                    return None
                digest, size = fetched[1].digest, fetched[1].size
            else:
                downloaded = path = self.staging / f".{Path(key).name}.{os.getpid()}.download.tmp"
                if not self.storage.get_file(key, path):
                    log.warning("skipping %s: it vanished while resuming", key)
                    return None
                digest, size = checksums.file_digest(path, algo)
            if digest != expected or size != record["size"]:
                log.warning(
                    "skipping %s: its bytes do not match its checksum (%s; torn or corrupt: %d bytes, expected %d); "
                    "falling back to the previous checkpoint", key, algo, size, record["size"],
                )
                return None
            if fetched is not None:
                return _load_from_memory(fetched[0].buffer)
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            log.warning("skipping %s: it vanished while resuming", key)
            return None
        except Exception as e:  # a checkpoint that passes the checksum but not the loader
            log.warning("skipping %s: it cannot be loaded (%s); falling back", key, e)
            return None
        finally:
            if fetched is not None:
                fetched[0].close()  # the tensors made from it keep its pages
            if downloaded is not None:
                downloaded.unlink(missing_ok=True)


class _Prefetch:
    """``latest.pt`` downloaded from a remote store while ``load`` lists the checkpoints and reads its record:
    on a fast link those two requests are a fair share of a resume. Hashed as it arrives with the checksum
    writers record first; used only when the record then names exactly those bytes, else dropped."""

    ALGO = checksums.PREFERRED[0]

    def __init__(self, storage: Storage) -> None:
        self._result: tuple[Any, Any] | None = None
        self._taken = False
        get_in_memory = storage.get_in_memory  # type: ignore[attr-defined]

        def fetch() -> None:
            try:
                self._result = get_in_memory(contract.LATEST, checksums.maker(self.ALGO))
            except Exception:  # noqa: BLE001 - the regular path meets it again and says it properly
                self._result = None

        self._thread = threading.Thread(target=fetch, name="prefetch-latest", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, storage: Storage) -> _Prefetch | None:
        remote = storage.local_path(contract.LATEST) is None and callable(getattr(storage, "get_in_memory", None))
        return cls(storage) if remote else None

    def take(self, algo: str, digest: str, size: int) -> tuple[Any, Any] | None:
        """The prefetched ``(buffer, fetched)`` when its bytes are the ones the record names; None otherwise
        (not there, failed, another checksum recorded, or replaced since: the caller downloads it again)."""
        if self._taken:
            return None
        self._taken = True
        self._thread.join()
        got, self._result = self._result, None
        if got is None:
            return None
        if algo != self.ALGO or got[1].digest != digest or got[1].size != size:
            log.info("%s changed while it was prefetched; downloading it again", contract.LATEST)
            got[0].close()
            return None
        return got

    def close(self) -> None:
        self._taken = True
        self._thread.join()
        if self._result is not None:
            self._result[0].close()
            self._result = None


class _ViewFile(io.RawIOBase):
    """A read-only file over bytes in memory, without copying them (``io.BytesIO`` would copy)."""

    def __init__(self, buffer: Any) -> None:
        self.view, self.pos = memoryview(buffer), 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: len(self.view)}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), len(self.view) - self.pos))
        b[:n] = self.view[self.pos:self.pos + n]
        self.pos += n
        return n


def _zero_copy_load_available() -> bool:
    ser = torch.serialization
    try:
        return (callable(getattr(ser, "_open_zipfile_reader", None)) and hasattr(ser, "_weights_only_unpickler")
                and "overall_storage" in inspect.signature(ser._load).parameters)
    except (AttributeError, TypeError, ValueError):
        return False


_ZERO_COPY_LOAD = _zero_copy_load_available()


def _load_from_memory(buffer: Any) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint held in ``buffer``, its tensors views of
    those very bytes instead of copies (copying a large checkpoint costs as much as fetching it from
    a fast store: the allocation's page faults, then the copy).

    This is what ``torch.load(path, mmap=True)`` does with the file it maps, given the bytes this
    process already holds: the same reader and the same weights-only unpickler, torch's own, used
    through ``torch.serialization._load``. That is torch's internal API, so it is checked for at
    import, and without it the checkpoint is loaded by ``torch.load`` from the buffer, copied:
    slower, equally safe. The model's tensors are copied out by ``load_state_dict``; the
    optimizer's moments stay views, so the buffer lives while a CPU optimizer holds them (on a GPU
    they are copied there and it goes)."""
    if not _ZERO_COPY_LOAD:
        return torch.load(_ViewFile(buffer), map_location="cpu", weights_only=True)
    ser = torch.serialization
    storage = torch.frombuffer(buffer, dtype=torch.uint8).untyped_storage()
    with ser._open_zipfile_reader(_ViewFile(buffer)) as zip_file:
        return ser._load(zip_file, "cpu", ser._weights_only_unpickler, overall_storage=storage, encoding="utf-8")
