"""Loading a checkpoint held in memory (a resume from S3): the tensors are views of the downloaded
bytes, not copies; without torch's internal loader the same checkpoint loads by copying; and in
both ways a checkpoint that would run code is refused."""

from __future__ import annotations

import io
import mmap
import os
import pickle

import pytest
import torch

from trainer import checkpoint


def _in_memory(obj) -> mmap.mmap:
    raw = io.BytesIO()
    torch.save(obj, raw)
    data = raw.getvalue()
    buffer = mmap.mmap(-1, len(data), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buffer[:] = data
    return buffer


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"step": 7, "model": {"w": torch.randn(300, 200, generator=g)},
            "optimizer": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(300, 200, generator=g)}},
                          "param_groups": [{"lr": 0.1, "params": [0]}]}}


def _inside(t: torch.Tensor, buffer: mmap.mmap) -> bool:
    base = torch.frombuffer(buffer, dtype=torch.uint8).data_ptr()
    return base <= t.data_ptr() < base + len(buffer)


def test_the_tensors_are_views_of_the_downloaded_bytes() -> None:
    assert checkpoint._ZERO_COPY_LOAD, "torch's loader changed: resumes from S3 now copy every tensor"
    state = _state()
    buffer = _in_memory(state)
    loaded = checkpoint._load_from_memory(buffer)
    assert loaded["step"] == 7 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    moment = loaded["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(moment, state["optimizer"]["state"][0]["exp_avg"])
    assert _inside(loaded["model"]["w"], buffer) and _inside(moment, buffer)
    moment.add_(1.0)  # an optimizer step writes its moments in place, into the buffer
    assert torch.equal(moment, state["optimizer"]["state"][0]["exp_avg"] + 1.0)


def test_without_torchs_internal_loader_it_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "_ZERO_COPY_LOAD", False)
    state = _state()
    buffer = _in_memory(state)
    loaded = checkpoint._load_from_memory(buffer)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and not _inside(loaded["model"]["w"], buffer)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("zero_copy", [True, False])
def test_a_checkpoint_that_would_run_code_is_refused(zero_copy: bool, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(checkpoint, "_ZERO_COPY_LOAD", zero_copy)
    buffer = _in_memory({"step": 1, "payload": _RunsCode()})
    with pytest.raises(pickle.UnpicklingError):
        checkpoint._load_from_memory(buffer)
    assert not (tmp_path / "pwned").exists()
