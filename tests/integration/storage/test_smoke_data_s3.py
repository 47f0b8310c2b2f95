"""A smoke run's slice of ``s3://`` data: the prefix is listed and only the slice is downloaded, into
a cache of its own that the next smoke reuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.s3 import S3Server
from trainer import smoke_data
from trainer.config import Data

pytestmark = pytest.mark.integration


def test_only_the_slice_of_an_s3_midi_folder_is_downloaded(env: S3Server, tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(smoke_data, "MAX_FILES", 4)
    client = env.client()
    for pianist in ("bill", "keith"):
        for n in range(10):
            client.put_object(Bucket=env.bucket, Key=f"pijama/{pianist}/{n:02d}.mid", Body=b"MThd" + bytes(n))
    data = Data(format="midi", train=f"s3://{env.bucket}/pijama/")
    sliced = smoke_data.slice_data(data, tmp_path / "job.yaml", tmp_path / "slice")
    got = sorted(p.relative_to(sliced.data.train).as_posix() for p in (tmp_path / "cache").rglob("*.mid"))
    assert got == ["bill/00.mid", "bill/01.mid", "keith/00.mid", "keith/01.mid"]
    assert sliced.description.startswith("a slice of the data: 4 of 20 file(s)")

    # Text files: the first that fit, linked from the same kind of cache.
    monkeypatch.setattr(smoke_data, "MAX_BYTES", 25)
    for n in range(3):
        client.put_object(Bucket=env.bucket, Key=f"text/{n}.txt", Body=b"0123456789\n")
    sliced = smoke_data.slice_data(Data(format="text", train=f"s3://{env.bucket}/text/"), tmp_path / "job.yaml",
                                   tmp_path / "slice2")
    assert [Path(p).read_text() for p in sliced.data.train] == ["0123456789\n", "0123456789\n"]
    assert sliced.fraction == pytest.approx(2 / 3)
