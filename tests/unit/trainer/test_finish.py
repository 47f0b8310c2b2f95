"""The finish's pieces on their own: MIDI written from piano rolls, predictions turned into notes,
tokens drawn, prompts chosen, the finish settings, which parts a relaunch may skip, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import contract
from trainer.config import Finish, Samples
from trainer.finish import _done_parts, render_markdown
from trainer.sampling import (
    NOTE_ON,
    RollStats,
    continue_ids,
    generator,
    pick,
    probabilities_to_roll,
    roll_statistics,
    spread,
    text_prompts,
    write_midi,
    write_text_samples,
)
from trainer.storage import LocalStorage


def test_a_roll_becomes_the_notes_it_shows(tmp_path):
    from symusic import Score

    roll = np.zeros((88, 16), np.uint8)
    roll[39, 2:6] = 80  # middle C (MIDI 60), frames 2-5
    roll[39, 8] = 100  # again, one frame
    roll[50, :] = 60  # MIDI 71 held throughout
    assert write_midi(roll, frames_per_beat=4, path=tmp_path / "x.mid") == 3
    score = Score(str(tmp_path / "x.mid"))
    ticks = score.tpq // 4  # per frame
    notes = sorted((n.time // ticks, n.duration // ticks, n.pitch, n.velocity) for n in score.tracks[0].notes)
    assert notes == [(0, 16, 71, 60), (2, 4, 60, 80), (8, 1, 60, 100)]


def test_an_empty_roll_is_a_valid_empty_file(tmp_path):
    import mido

    assert write_midi(np.zeros((88, 8), np.uint8), 4, tmp_path / "empty.mid") == 0
    assert len(mido.MidiFile(tmp_path / "empty.mid").tracks) == 1


def test_sure_cells_sound_at_their_predicted_velocity():
    probs = np.zeros((88, 4), np.float32)
    probs[10, 1] = 0.5
    probs[20, 2] = NOTE_ON
    roll = probabilities_to_roll(probs, RollStats(density=0.0, velocity=64))
    assert roll[10, 1] == 64 and roll[20, 2] == round(NOTE_ON * 127)
    assert np.count_nonzero(roll) == 2


def test_an_unsure_model_still_sounds_its_likeliest_cells_at_the_data_density():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.0, 0.05, size=(88, 64)).astype(np.float32)  # nothing near NOTE_ON
    stats = RollStats(density=0.01, velocity=77)
    roll = probabilities_to_roll(probs, stats)
    on = roll > 0
    assert on.sum() == round(0.01 * probs.size)
    assert probs[on].min() >= probs[~on].max()  # the likeliest ones
    assert set(roll[on].tolist()) == {77}
    assert not probabilities_to_roll(np.zeros((88, 8)), stats).any()  # nothing predicted: nothing sounds


def test_roll_statistics_measure_density_and_velocity():
    a, b = np.zeros((88, 4), np.uint8), np.zeros((88, 4), np.uint8)
    a[0, 0], b[1, 1], b[2, 2] = 60, 90, 90
    stats = roll_statistics([(a, 0), (b, 1)])
    assert stats.density == pytest.approx(3 / (2 * 88 * 4)) and stats.velocity == 80


def test_top_k_1_picks_the_likeliest_and_continuation_appends():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    settings = Samples(top_k=1)
    assert pick(logits, settings, generator(0)).flatten().tolist() == [1, 0]
    ids = continue_ids(lambda x: torch.nn.functional.one_hot((x + 1) % 5, 5).float() * 10, torch.tensor([[0]]), 4,
                       settings, generator(0))
    assert ids.tolist() == [[0, 1, 2, 3, 4]]


def test_draws_repeat_with_the_seed():
    logits = torch.zeros(1, 50)
    draw = [pick(logits, Samples(top_k=None), generator(7)).item() for _ in range(2)]
    assert draw[0] == draw[1]


def test_prompts_are_the_jobs_in_turn_else_the_start_of_spread_validation_examples():
    encode = lambda text: list(text.encode())  # noqa: E731
    assert text_prompts(Samples(count=3, prompts=["ab", "c"]), None, encode) == [[97, 98], [99], [97, 98]]
    examples = [torch.arange(i, i + 10) for i in range(0, 100, 10)]
    assert text_prompts(Samples(count=2, prompt_tokens=3), examples, encode) == [[0, 1, 2], [90, 91, 92]]
    assert text_prompts(Samples(count=2), [], encode) == []
    assert spread(3, 10) == [0, 1, 2] and spread(0, 3) == []


def test_text_samples_keep_prompt_and_continuation(tmp_path):
    files = write_text_samples(tmp_path, [("Once ", "upon a time"), ("x", "y")])
    assert [f.name for f in files] == ["sample-1.txt", "sample-2.txt", "samples.json"]
    assert (tmp_path / "sample-1.txt").read_text() == "Once upon a time"
    assert json.loads((tmp_path / "samples.json").read_text())[1] == {"file": "sample-2.txt", "prompt": "x",
                                                                     "continuation": "y"}


def test_finish_settings_default_to_best_with_samples_merge_and_report():
    f = Finish()
    assert (f.final, f.merge, f.report, f.samples.count) == ("best", True, True, 3)
    assert Finish.model_validate({"samples": 0}).samples.count == 0
    assert Finish.model_validate({"samples": False}).samples.count == 0
    assert Finish.model_validate({"samples": 5}).samples.count == 5


def test_a_relaunch_skips_only_parts_published_for_the_same_step_and_choice(tmp_path):
    storage = LocalStorage(tmp_path)
    for key in ("final/model.safetensors", "samples/sample-1.txt"):
        storage.put_bytes(key, b"x")
    record = {"step": 30, "final": "best", "parts": {"final": ["final/model.safetensors"],
                                                     "samples": ["samples/sample-1.txt", "samples/gone.txt"]}}
    storage.put_bytes(contract.FINISH_RECORD, json.dumps(record).encode())
    assert _done_parts(storage, 30, "best") == {"final": ["final/model.safetensors"]}  # a sample file is missing
    assert _done_parts(storage, 31, "best") == {}
    assert _done_parts(storage, 30, "last") == {}
    storage.put_bytes(contract.FINISH_RECORD, b"{torn")
    assert _done_parts(storage, 30, "best") == {}


def report(**overrides) -> dict:
    base = {"job": "quickstart", "stage": None, "recipe": "tiny_gpt", "run_uri": "/r",
            "final": {"chosen": "best", "asked": "best", "step": 40}, "steps": 60, "max_steps": 60,
            "early_stopped": False,
            "validation": {"best": {"step": 40, "loss": 1.5, "perplexity": 4.48, "token_accuracy": 0.5},
                           "last": {"step": 60, "loss": 1.6, "perplexity": 4.95, "token_accuracy": 0.49},
                           "base": {"step": None, "loss": 3.0, "perplexity": 20.1, "token_accuracy": 0.2}},
            "train_hours": 0.01, "billed_hours": 0.02, "usd": 0.01, "usd_estimated": True, "preemptions": 2,
            "resumes": 2, "files": {"final": ["final/model.safetensors"], "samples": ["samples/sample-1.txt"],
                                    "merged": ["final/merged/model.safetensors"]}}
    return {**base, **overrides}


def test_the_markdown_report_shows_best_last_base_cost_and_samples():
    text = render_markdown(report(), {"samples/sample-1.txt": "Once upon"})
    assert "`final/` holds the weights of step 40 (the best validation loss)" in text
    assert "| best | 40 | 1.5 | 4.48 | 0.5 |" in text
    assert "| last step | 60 | 1.6 | 4.95 | 0.49 |" in text
    assert "| base model (no adapter) | – | 3 | 20.1 | 0.2 |" in text
    assert "2 preemption(s) survived" in text and "$0.01" in text
    assert "final/merged/" in text and "Once upon" in text


def test_the_markdown_report_without_validation_or_runner_says_so():
    text = render_markdown(report(validation={}, billed_hours=None, usd=None, preemptions=None,
                                  final={"chosen": "last", "asked": "best", "step": 60},
                                  files={"final": [], "samples": [], "merged": []}))
    assert "No validation data" in text and "no validation data, so no best" in text
    assert "2 resume(s) from a checkpoint" in text and "$" not in text


def test_prompts_may_not_be_empty(tmp_path: Path):
    with pytest.raises(ValueError):
        Samples(prompts=[""])
