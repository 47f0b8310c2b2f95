"""The slice of a job's data a smoke run trains on (trainer/smoke_data.py): whole files within the
budget, every pianist of a MIDI folder in it, a file larger than the budget cut where an example
ends, small local data used as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer import smoke_data
from trainer.config import Data


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setattr(smoke_data, "MAX_FILES", 6)
    monkeypatch.setattr(smoke_data, "MAX_BYTES", 1000)


def test_a_midi_folder_is_sliced_round_robin_over_the_pianists(tmp_path, small_budget):
    root = tmp_path / "midi"
    for pianist in ("bill", "brad", "keith"):
        for n in range(30):
            (root / pianist / "album").mkdir(parents=True, exist_ok=True)
            (root / pianist / "album" / f"{n:02d}.mid").write_bytes(b"x" * 10)
    (root / "brad" / "notes.txt").write_text("not MIDI")
    data = Data(format="midi", train=str(root), val=str(root))
    sliced = smoke_data.slice_data(data, tmp_path / "job.yaml", tmp_path / "slice")
    files = sorted(p.relative_to(sliced.data.train).as_posix() for p in
                   (tmp_path / "slice").rglob("*.mid"))
    assert files == [f"{p}/album/{n:02d}.mid" for p in ("bill", "brad", "keith") for n in (0, 1)]
    assert sliced.data.val is None and sliced.fraction == pytest.approx(6 / 90)
    assert sliced.description == "a slice of the data: 6 of 90 file(s), 60 bytes of 900 bytes"


def test_a_text_file_larger_than_the_budget_is_cut_at_a_line(tmp_path, small_budget):
    big = tmp_path / "big.txt"
    big.write_text("".join(f"line {n} of the text\n" for n in range(200)))
    sliced = smoke_data.slice_data(Data(format="text", train=str(big)), tmp_path / "job.yaml", tmp_path / "slice")
    (path,) = sliced.data.train
    text = Path(path).read_text()
    assert len(text) <= 1000 and text.endswith("\n") and big.read_text().startswith(text)
    assert 0 < sliced.fraction < 0.3 and big.read_text().count("\n") == 200  # the job's own file is untouched


def test_token_shards_are_cut_at_a_token(tmp_path, small_budget):
    np.arange(3000, dtype=np.int32).tofile(tmp_path / "raw")
    np.save(tmp_path / "a.npy", np.arange(3000, dtype=np.int32))
    (tmp_path / "b.bin").write_bytes(np.arange(3000, dtype=np.uint16).tobytes())
    for name, expected in (("a.npy", np.arange(250, dtype=np.int32)), ("b.bin", None)):
        sliced = smoke_data.slice_data(Data(format="tokens", train=str(tmp_path / name), vocab_size=4000),
                                       tmp_path / "job.yaml", tmp_path / f"slice-{name}")
        (path,) = sliced.data.train
        if expected is not None:
            assert np.array_equal(np.load(path), expected)
        else:
            assert np.array_equal(np.fromfile(path, dtype=np.uint16), np.arange(500, dtype=np.uint16))


def test_files_are_taken_whole_and_in_order(tmp_path, small_budget):
    for n in range(5):
        (tmp_path / f"part-{n}.jsonl").write_text('{"text": "hello"}\n' * 20)  # 360 bytes each
    sliced = smoke_data.slice_data(Data(format="jsonl", train=str(tmp_path / "part-*.jsonl")), tmp_path / "job.yaml",
                                   tmp_path / "slice")
    assert [p.rsplit("/", 1)[1] for p in sliced.data.train] == ["part-0.jsonl", "part-1.jsonl"]
    assert sliced.fraction == pytest.approx(2 / 5)


def test_small_local_data_is_used_as_it_is(tmp_path):
    (tmp_path / "t.txt").write_text("hello\n")
    data = Data(format="text", train="t.txt")
    sliced = smoke_data.slice_data(data, tmp_path / "job.yaml", tmp_path / "slice")
    assert sliced.data.train == "t.txt" and sliced.fraction == 1.0
    assert sliced.description.startswith("all of the data: 1 file(s)")
