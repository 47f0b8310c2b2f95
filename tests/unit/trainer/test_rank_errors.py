"""Which rank's error rank 0 records in status.json when a multi-process run fails."""

from __future__ import annotations

import json
import time

from trainer import __main__ as trainer_main
from trainer import contract
from trainer.storage import LocalStorage


def put(storage: LocalStorage, rank: int, at: float, error: str) -> None:
    record = {"rank": rank, "attempt": "", "time": at, "error": error}
    storage.put_bytes(contract.RANK_ERROR.format(rank=rank), json.dumps(record).encode())


def test_the_rank_that_failed_before_rank_0_is_named(tmp_path):
    storage = LocalStorage(str(tmp_path))
    now = time.time()
    put(storage, 1, now - 0.5, "Traceback ...\nValueError: bad shard")
    put(storage, 2, now - 0.2, "RuntimeError: connection closed by peer")
    assert trainer_main._peer_error(storage, 3, before=now) == "rank 1 failed first: ValueError: bad shard"


def test_a_rank_that_failed_after_rank_0_or_in_an_earlier_launch_is_not_the_cause(tmp_path):
    storage = LocalStorage(str(tmp_path))
    now = time.time()
    put(storage, 1, now + 0.5, "RuntimeError: connection closed by peer")  # broken by rank 0's own failure
    assert trainer_main._peer_error(storage, 2, before=now) is None
    put(storage, 1, trainer_main._STARTED - 3600, "ValueError: an old crash")  # left by an earlier launch
    assert trainer_main._peer_error(storage, 2, before=now) is None
    assert trainer_main._peer_error(storage, 1, before=now) is None  # one process: nobody else
