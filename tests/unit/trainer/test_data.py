"""Data paths: token shards, text and jsonl through a tokenizer, globs, the held-out validation
tail, and the errors a user sees for a wrong path or a bad line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import Data
from trainer.data import ByteTokenizer, HFTokenizer, load_datasets
from trainer.storage_api import StorageError

BYTES = ByteTokenizer()


def data(**kw) -> Data:
    return Data(**{"val_fraction": 0.0, "block_size": 8, **kw})


def items(dataset) -> list[list[int]]:
    return [dataset[i].tolist() for i in range(len(dataset))]


def bin_shard(path: Path, tokens) -> Path:
    np.asarray(tokens, dtype=np.uint16).tofile(path)  # what nanoGPT's prepare.py writes
    return path


# --- token shards ---------------------------------------------------------------------------------
def test_bin_shard_is_read_as_uint16_windows_that_step_by_block_size(tmp_path):
    tokens = np.arange(1000, 1000 + 35)  # above 255: a uint8 or int32 reading would be wrong
    bin_shard(tmp_path / "train.bin", tokens)
    train, val = load_datasets(data(format="tokens", train="train.bin"), tmp_path / "job.yaml", None)
    assert val is None
    assert len(train) == (35 - 1) // 8 == 4
    for i, window in enumerate(items(train)):
        assert window == tokens[i * 8 : i * 8 + 9].tolist()  # 9 = block_size + 1: inputs and shifted targets
    assert train[0].dtype == torch.int64


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_npy_shard_of_any_integer_dtype(tmp_path, dtype):
    tokens = np.arange(20, dtype=dtype)
    np.save(tmp_path / "t.npy", tokens)
    train, _ = load_datasets(data(format="tokens", train="t.npy"), tmp_path / "job.yaml", None)
    assert items(train) == [list(range(0, 9)), list(range(8, 17))]


def test_glob_reads_files_in_sorted_order_and_windows_never_cross_files(tmp_path):
    (tmp_path / "shards").mkdir()
    bin_shard(tmp_path / "shards" / "b.bin", range(100, 110))
    bin_shard(tmp_path / "shards" / "a.bin", range(0, 10))
    bin_shard(tmp_path / "shards" / "c.bin", range(200, 205))  # shorter than a window: contributes nothing
    train, _ = load_datasets(data(format="tokens", train="shards/*.bin"), tmp_path / "job.yaml", None)
    assert items(train) == [list(range(0, 9)), list(range(100, 109))]


def test_a_list_of_paths_keeps_its_order(tmp_path):
    bin_shard(tmp_path / "x.bin", range(50, 60))
    bin_shard(tmp_path / "y.bin", range(0, 10))
    train, _ = load_datasets(data(format="tokens", train=["x.bin", str(tmp_path / "y.bin")]), tmp_path / "job.yaml", None)
    assert items(train) == [list(range(50, 59)), list(range(0, 9))]


def test_bad_shards_say_what_is_wrong(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match=r"odd\.bin: 3 bytes is not a whole number of uint16 tokens"):
        load_datasets(data(format="tokens", train="odd.bin"), tmp_path / "job.yaml", None)
    np.save(tmp_path / "f.npy", np.zeros(20, dtype=np.float32))
    with pytest.raises(ValueError, match=r"f\.npy: a token shard must be a 1-D array of integers"):
        load_datasets(data(format="tokens", train="f.npy"), tmp_path / "job.yaml", None)


# --- validation split -----------------------------------------------------------------------------
def test_val_fraction_holds_out_the_tail_of_all_files_without_overlap(tmp_path):
    # Two files of distinct tokens: positions in the data are recoverable from the token values.
    bin_shard(tmp_path / "a.bin", range(0, 100))
    bin_shard(tmp_path / "b.bin", range(1000, 1030))
    spec = data(format="tokens", train=["a.bin", "b.bin"], val_fraction=0.3, block_size=4)
    train, val = load_datasets(spec, tmp_path / "job.yaml", None)
    train_tokens = {t for w in items(train) for t in w}
    val_tokens = {t for w in items(val) for t in w}
    assert not train_tokens & val_tokens
    # 30% of 130 tokens = 39: all of b.bin (30) and the last 9 of a.bin.
    assert val_tokens <= set(range(91, 100)) | set(range(1000, 1030))
    assert max(train_tokens) <= 90
    assert len(val) == 2 + 7  # (9 - 1) // 4 windows in a.bin's tail, (30 - 1) // 4 in b.bin


def test_val_fraction_on_text_and_an_explicit_val_file(tmp_path):
    (tmp_path / "train.txt").write_text("abcdefghijklmnopqrstuvwxyz" * 4)
    (tmp_path / "val.txt").write_text("0123456789" * 2)
    text = "abcdefghijklmnopqrstuvwxyz" * 4
    train, val = load_datasets(data(format="text", train="train.txt", val_fraction=0.25), tmp_path / "job.yaml", BYTES)
    assert len(train) == (78 - 1) // 8 and len(val) == (26 - 1) // 8  # 104 bytes, 26 held out
    assert bytes(items(train)[-1]).decode() == text[64:73]  # the last training window ends before byte 78
    assert bytes(items(val)[0]).decode() == text[78:87]
    train, val = load_datasets(data(format="text", train="train.txt", val="val.txt", val_fraction=0.25),
                               tmp_path / "job.yaml", BYTES)
    assert len(train) == (104 - 1) // 8  # an explicit val file: nothing held out of train
    assert bytes(items(val)[0]).decode() == "012345678"


def test_val_fraction_on_jsonl_holds_out_the_last_examples(tmp_path):
    lines = [json.dumps({"text": f"example {i:02d}"}) for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    train, val = load_datasets(data(format="jsonl", train="d.jsonl", val_fraction=0.2, block_size=64),
                               tmp_path / "job.yaml", BYTES)
    decoded = lambda ds: [bytes(x).decode() for x in items(ds)]  # noqa: E731
    assert decoded(train) == [f"example {i:02d}" for i in range(16)]
    assert decoded(val) == [f"example {i:02d}" for i in range(16, 20)]


def test_too_little_data_for_the_split_says_what_to_do(tmp_path):
    (tmp_path / "one.jsonl").write_text('{"text": "only one"}\n')
    with pytest.raises(ValueError, match="too few to hold out val_fraction.*set val_fraction: 0"):
        load_datasets(data(format="jsonl", train="one.jsonl", val_fraction=0.1), tmp_path / "job.yaml", BYTES)
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match="no complete window of block_size \\+ 1 = 9 tokens"):
        load_datasets(data(format="text", train="short.txt"), tmp_path / "job.yaml", BYTES)


# --- text and jsonl -------------------------------------------------------------------------------
def test_jsonl_reads_text_field_cuts_to_block_size_and_skips_blank_lines(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        '{"body": "hello world, this is long", "id": 1}\n\n   \n{"body": "hi", "id": 2}\n'
    )
    train, _ = load_datasets(data(format="jsonl", train="d.jsonl", text_field="body"), tmp_path / "job.yaml", BYTES)
    assert [bytes(x).decode() for x in items(train)] == ["hello wor", "hi"]  # cut to block_size + 1 = 9


def test_jsonl_examples_too_short_to_predict_anything_are_skipped(tmp_path, caplog):
    (tmp_path / "d.jsonl").write_text('{"text": ""}\n{"text": "a"}\n{"text": "ab"}\n')
    with caplog.at_level(logging.WARNING, logger="trainer"):
        train, _ = load_datasets(data(format="jsonl", train="d.jsonl"), tmp_path / "job.yaml", BYTES)
    assert items(train) == [[97, 98]]
    assert "skipped 2 of 3 examples shorter than 2 tokens" in caplog.text


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\n{"text": "broken\n', r"d\.jsonl:2: not valid JSON .*each line must be one JSON object"),
    ('{"text": "ok"}\n\n["a list"]\n', r"d\.jsonl:3: expected a JSON object with a text field 'text', found list"),
    ('{"text": "ok"}\n{"content": "x", "id": 3}\n', r"d\.jsonl:2: no text field 'text' .*its keys: 'content', 'id'.*set data\.text_field"),
    ('{"text": 5}\n', r"d\.jsonl:1: no text field 'text' \(a string\)"),
])
def test_bad_jsonl_lines_are_reported_with_file_and_line(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_datasets(data(format="jsonl", train="d.jsonl"), tmp_path / "job.yaml", BYTES)


def test_text_through_a_hugging_face_tokenizer(tmp_path):
    from tests.fixtures.tiny_hf import corpus, make_tokenizer, write_jsonl

    lines = corpus(60, seed=3)
    make_tokenizer(tmp_path / "tok", lines)
    tok = HFTokenizer(str(tmp_path / "tok"))
    assert tok.vocab_size == 320 and tok.pad_id == tok.tok.eos_token_id  # no pad token: pad with EOS
    text = "\n".join(lines)
    (tmp_path / "t.txt").write_text(text)
    train, _ = load_datasets(data(format="text", train="t.txt", tokenizer="ignored-here"), tmp_path / "job.yaml", tok)
    ids = tok.tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * 9 and items(train)[:3] == [ids[0:9], ids[8:17], ids[16:25]]
    assert tok.tok.decode(items(train)[0]) == tok.tok.decode(ids[:9])

    write_jsonl(tmp_path / "d.jsonl", lines[:5], field="song")
    train, _ = load_datasets(data(format="jsonl", train="d.jsonl", text_field="song", block_size=128),
                             tmp_path / "job.yaml", tok)
    assert [tok.tok.decode(x) for x in items(train)] == lines[:5]  # a real BPE round-trips the text


# --- paths ----------------------------------------------------------------------------------------
def test_s3_data_without_credentials_says_which_variables_to_set(tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        load_datasets(data(format="tokens", train="s3://bucket/train.bin"), tmp_path / "job.yaml", None)


def test_missing_files_name_the_path_and_where_it_was_looked_for(tmp_path):
    job = tmp_path / "jobs" / "job.yaml"
    with pytest.raises(FileNotFoundError, match=r"data file not found: 'nope\.bin' \(looked for .*jobs/nope\.bin\); "
                                                r"relative paths are relative to the job file's folder"):
        load_datasets(data(format="tokens", train="nope.bin"), job, None)
    with pytest.raises(FileNotFoundError, match=r"no file matches 'shards/\*\.bin'"):
        load_datasets(data(format="tokens", train="shards/*.bin"), job, None)
    (tmp_path / "jobs" / "folder").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=r"'folder' is a folder .*folder/\*\.bin"):
        load_datasets(data(format="tokens", train="folder"), job, None)
    with pytest.raises(ValueError, match=r"'gs://bucket/train\.bin': unsupported scheme; give a local path or s3://"):
        load_datasets(data(format="tokens", train="gs://bucket/train.bin"), job, None)
    bin_shard(tmp_path / "jobs" / "train.bin", range(20))
    with pytest.raises(FileNotFoundError, match="val.bin"):  # a missing val file too, not only train
        load_datasets(data(format="tokens", train="train.bin", val="val.bin"), job, None)
