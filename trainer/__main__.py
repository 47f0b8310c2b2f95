"""``python -m trainer run JOB.yaml --run-uri URI``, ``python -m trainer restart-loop ...``,
``python -m trainer smoke JOB.yaml --out DIR`` and ``python -m trainer fetch-dataset NAME --to s3://BUCKET/PREFIX/``.

Exit codes are the contract with the runner (``trainer.contract``): 0 done, 75 interrupted after an
emergency checkpoint, 2 invalid job file, 3 storage misconfigured, 4 diverged, 1 anything else."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from trainer import contract


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer", description="Train a job; resume from its run URI by itself.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "train once: resume from the newest good checkpoint under the run URI, or start fresh"),
        ("restart-loop", "run, and rerun after a crash with backoff, a bounded number of times (container entrypoint)"),
    ):
        s = sub.add_parser(name, help=help_text)
        s.add_argument("job", help="job file (YAML) with a train: section")
        s.add_argument("--run-uri", required=True, help="where the run lives: a local path, file://PATH or s3://BUCKET/PREFIX")
        s.add_argument("--cache-dir", default=None, help="local working copy for remote runs (default: $XDG_CACHE_HOME or the temp dir)")
        if name == "restart-loop":
            s.add_argument("--max-restarts", type=int, default=5, help="crashes to recover from before giving up (default 5)")
            s.add_argument("--backoff", type=float, default=5.0, help="seconds before the first restart; doubles each time")
            s.add_argument("--nproc", type=int, default=1, help="processes per machine; more than 1 starts torchrun")
    m = sub.add_parser("smoke", help="a short run of the job here (CPU or this GPU): does the loss fall, any NaN/Inf, "
                                     "gradient norms, memory, seconds per step; the result as JSON in --out")
    m.add_argument("job", help="job file (YAML); RUNNER_STAGE picks a pipeline stage, RUNNER_INIT_FROM its weights")
    m.add_argument("--out", required=True, help=f"folder for {contract.SMOKE_RESULT} and the weights it ends with")
    m.add_argument("--steps", type=int, default=100, help="optimizer steps at most (default 100)")
    m.add_argument("--seconds", type=float, default=60.0, help="seconds at most from start to result, setting up the "
                                                                 "data and model included (default 60)")
    m.add_argument("--processes", type=int, default=1, help="processes the job trains with (its per-process batch)")
    f = sub.add_parser("fetch-dataset", help="download a public MIDI dataset (maestro, pijama) and upload its "
                                             "MIDI files to s3://BUCKET/PREFIX/")
    f.add_argument("name", help="maestro or pijama (any name with --url)")
    f.add_argument("--to", required=True, help="where the files go: s3://BUCKET/PREFIX/ (credentials: the AWS_* variables)")
    f.add_argument("--url", default=None, help="the archive (.zip) to use instead of the dataset's public one")
    return p


def fetch_dataset_command(name: str, to: str, url: str | None) -> int:
    from trainer.fetch_dataset import FetchError, fetch_dataset
    from trainer.storage import StorageError

    _console_logging()
    try:
        done = fetch_dataset(name, to, url)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return contract.EXIT_BAD_CONFIG
    except StorageError as e:
        print(f"error: {to}: {e}", file=sys.stderr)
        return contract.EXIT_STORAGE
    print(f"{name}: {done.uploaded} MIDI files uploaded ({done.bytes:,} bytes), {done.skipped} already in {to}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "fetch-dataset":
        return fetch_dataset_command(args.name, args.to, args.url)
    if args.command == "smoke":
        from trainer.smoke import run_smoke

        _console_logging()
        code = run_smoke(args.job, args.out, args.steps, args.seconds, args.processes, started=_STARTED_CLOCK)
        # The result is written: end now. Tearing torch down costs seconds of a loaded machine, and the
        # user waits for this process to end.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if args.command == "restart-loop":
        from trainer.restart import restart_loop

        return restart_loop(args.job, args.run_uri, args.cache_dir, args.max_restarts, args.backoff, args.nproc)
    return run(args.job, args.run_uri, args.cache_dir)


def run(job: str, run_uri: str, cache_dir: str | None = None) -> int:
    from trainer.config import load_train_config
    from trainer.jobfile import JobFileError
    from trainer.signals import StopRequest, die_with_launcher
    from trainer.storage import StorageError, open_storage

    # Signals first: a SIGTERM during the (slow) start must still end in a clean exit.
    stop = StopRequest()
    stop.install()
    die_with_launcher()
    _console_logging()
    log = logging.getLogger("trainer")
    if cache_dir and not os.environ.get("TRAINER_DATA_CACHE"):
        # Datasets from s3:// are cached beside the run's working copy (trainer.dataset_cache).
        os.environ["TRAINER_DATA_CACHE"] = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), "datasets")
    try:
        cfg, _ = load_train_config(job)
        cfg.checkpoint.minutes()  # every_minutes: auto is resolved here, where the trainer runs
    except JobFileError as e:
        print(str(e), file=sys.stderr)
        return contract.EXIT_BAD_CONFIG
    except ValueError as e:
        print(f"{job}: train.checkpoint.every_minutes: {e}", file=sys.stderr)
        return contract.EXIT_BAD_CONFIG
    try:
        storage = open_storage(run_uri, cache_dir)
        storage.check()
    except StorageError as e:
        log.error("storage: %s", e)
        return contract.EXIT_STORAGE
    except Exception as e:  # reachable but failing (throttled, 5xx, timeouts): a later relaunch can succeed
        log.error("storage: %s", e)
        return contract.EXIT_FAILED

    try:
        previous = contract.Status.read(storage)
    except ValueError:  # torn: as good as none
        previous = None
    if previous is not None and previous.state == contract.DONE:
        log.info("%s is already done (step %d): nothing to do", run_uri, previous.step)
        return contract.EXIT_DONE

    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 keeps the run's log
        _file_logging(storage)
    log.info("trainer starting: job %s, run %s, pid %d", job, storage.uri, os.getpid())
    if stop.requested:
        return contract.EXIT_INTERRUPTED

    from trainer.loop import Diverged, GradNormStop, JobSetupError, train
    from trainer.reporter import Reporter

    try:
        return train(cfg, job, storage, stop).exit_code
    except Diverged as e:
        return _known_failure(storage, Reporter, str(e), contract.EXIT_DIVERGED)
    except GradNormStop as e:
        return _known_failure(storage, Reporter, str(e), contract.EXIT_GRAD_NORM)
    except JobSetupError as e:
        return _known_failure(storage, Reporter, f"the job cannot be set up: {e}", contract.EXIT_BAD_CONFIG)
    except StorageError as e:
        return _known_failure(storage, Reporter, str(e), contract.EXIT_STORAGE, log_prefix="storage: ")
    except Exception as e:
        log.exception("training failed: %s", e)
        _record_failure(storage, Reporter, f"{type(e).__name__}: {e}", contract.EXIT_FAILED)
        return contract.EXIT_FAILED
    finally:
        _sync_log(storage)
        storage.close()


def _sync_log(storage) -> None:
    """Copy the log's last lines (written after the loop's final sync) to a remote run URI."""
    if storage.is_local or int(os.environ.get("RANK", "0")) != 0:
        return
    try:
        storage.sync_dir(storage.work_dir / contract.LOGS_DIR, contract.LOGS_DIR)
    except Exception as e:
        logging.getLogger("trainer").warning("could not copy the end of the log to %s: %s", storage.uri, e)


def _known_failure(storage, reporter_cls, error: str, code: int, log_prefix: str = "") -> int:
    """A failure the trainer expects (no traceback): logged, recorded in status.json, and its exit code."""
    logging.getLogger("trainer").error("%s%s", log_prefix, error)
    _record_failure(storage, reporter_cls, error, code)
    return code


def _record_failure(storage, reporter_cls, error: str, code: int) -> None:
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0:
        # Rank 0 alone writes status.json (its verdict is what torchrun's exit is read with); this
        # rank's error goes beside the log, for rank 0 to name in it.
        record = {"rank": rank, "attempt": os.environ.get(contract.ENV_ATTEMPT_ID, ""), "time": time.time(),
                  "error": error}
        try:
            storage.put_bytes(contract.RANK_ERROR.format(rank=rank), json.dumps(record).encode())
        except Exception as e:
            logging.getLogger("trainer").warning("could not record rank %d's failure: %s", rank, e)
        return
    if world > 1:
        first = _peer_error(storage, world, before=time.time())
        if first:
            error = f"rank 0: {error}\n{first}"  # the cause last: the runner shows the last line
    try:
        status = contract.Status.read(storage) or contract.Status(contract.FAILED)
        reporter_cls(storage, 1, 1, status).finish(contract.FAILED, error=error[:2000], exit_code=code)
    except Exception as e:
        logging.getLogger("trainer").warning("could not record the failure in status.json: %s", e)


def _peer_error(storage, world: int, before: float) -> str | None:
    """The error of another rank that failed in this launch before ``before``, as one line.

    A rank that crashes records its error before it exits, and its exit is what breaks rank 0's
    next collective: by the time rank 0 fails with "connection closed by peer", the cause is there.
    One that failed after rank 0 (broken by rank 0's own failure) is not the cause."""
    found = []
    for rank in range(1, world):
        try:
            raw = storage.get_bytes(contract.RANK_ERROR.format(rank=rank))
            record = json.loads(raw) if raw else None
        except Exception:
            record = None
        if record and _STARTED - 1 <= record.get("time", 0) <= before:  # this launch's, and first
            found.append(record)
    if not found:
        return None
    first = min(found, key=lambda r: r["time"])
    lines = str(first["error"]).strip().splitlines() or ["?"]
    return f"rank {first['rank']} failed first: {lines[-1][:500]}"


_STARTED = time.time()
_STARTED_CLOCK = time.perf_counter()  # the smoke's time budget counts from here: setting up is part of it
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _console_logging() -> None:
    root = logging.getLogger("trainer")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {rank}%(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _file_logging(storage) -> None:
    path = storage.work_dir / contract.TRAINER_LOG
    if not storage.is_local and not path.exists():
        storage.get_file(contract.TRAINER_LOG, path)  # a new machine continues the run's log
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    logging.getLogger("trainer").addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
