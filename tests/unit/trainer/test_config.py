"""The `train:` schema: what a user gets when a field is wrong, and the defaults they rely on."""

from __future__ import annotations

import math
import sys

import pytest

from trainer.config import TinyGPT, TrainConfig, load_train_config
from trainer.jobfile import JobFileError
from trainer.loop import lr_at


def _write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def _error(tmp_path, text: str) -> str:
    with pytest.raises(JobFileError) as info:
        load_train_config(_write(tmp_path, text))
    return str(info.value)


BASE = """\
name: t
train:
  model:
    recipe: tiny_gpt
  data:
    format: text
    train: corpus.txt
  max_steps: 10
"""


def test_the_quickstart_is_valid(repo_root):
    cfg, _ = load_train_config(repo_root / "jobs" / "quickstart.yaml")
    assert isinstance(cfg.model, TinyGPT)
    assert cfg.max_steps and cfg.checkpoint.every_steps


def test_unknown_field_names_file_line_and_the_closest_field(tmp_path):
    msg = _error(tmp_path, BASE + "  optimiser:\n    lr: 1.0e-3\n")
    assert f"{tmp_path / 'job.yaml'}:9: train.optimiser: unknown field; did you mean 'optimizer'?" in msg


def test_wrong_type_names_the_value(tmp_path):
    msg = _error(tmp_path, BASE.replace("max_steps: 10", "max_steps: ten"))
    assert ":8: train.max_steps:" in msg and "'ten'" in msg


def test_out_of_range_values(tmp_path):
    msg = _error(tmp_path, BASE + "  optimizer:\n    lr: -1\n  ema:\n    decay: 1.5\n")
    assert ":10: train.optimizer.lr: Input should be greater than 0" in msg
    assert ":12: train.ema.decay:" in msg


def test_unknown_recipe(tmp_path):
    msg = _error(tmp_path, BASE.replace("recipe: tiny_gpt", "recipe: resnet"))
    assert "model.recipe must be 'tiny_gpt', 'causal_lm_lora', 'vqvae', 'style_encoder', 'hybrid' or 'package.module:function'" in msg


def test_fields_of_another_recipe_are_not_suggested(tmp_path):
    msg = _error(tmp_path, BASE.replace("recipe: tiny_gpt", "recipe: causal_lm_lora\n    name_or_path: gpt2\n    n_layer: 2"))
    assert "train.model.n_layer: unknown field" in msg
    assert "did you mean 'n_layer'" not in msg


def test_cross_field_rules(tmp_path):
    assert "give exactly one of max_steps or epochs" in _error(tmp_path, BASE + "  epochs: 3\n")
    assert "n_embd (65) must be a multiple of n_head (4)" in _error(tmp_path, BASE.replace("recipe: tiny_gpt", "recipe: tiny_gpt\n    n_embd: 65"))


def test_duplicate_key_and_bad_yaml(tmp_path):
    assert "train.max_steps is given twice (first on line 8)" in _error(tmp_path, BASE + "  max_steps: 20\n")
    assert "not valid YAML" in _error(tmp_path, "train:\n  model: [unclosed\n")
    assert "no `train:` section" in _error(tmp_path, "name: x\n")


def test_schema_is_torch_free():
    """The runner validates jobs with this module, and must not pay for importing torch."""
    import subprocess

    code = "import sys, trainer.config, trainer.contract, trainer.storage; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig.model_validate({
        "model": {"recipe": "tiny_gpt"}, "data": {"format": "text", "train": "x"}, "max_steps": 100,
        "optimizer": {"lr": 1.0}, "schedule": {"warmup_steps": 10, "min_lr_ratio": 0.1},
    })
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)), "monotone decay after warmup"
    assert lrs[10] == pytest.approx(1.0) and lr_at(100, cfg, 100) == pytest.approx(0.1)
    assert lr_at(55, cfg, 100) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))


def test_keep_last_of_one_is_refused_since_a_torn_write_would_leave_nothing(tmp_path):
    msg = _error(tmp_path, BASE + "  checkpoint:\n    keep_last: 1\n")
    assert ":10: train.checkpoint.keep_last: Input should be greater than or equal to 2" in msg


def test_a_checkpoint_of_another_format_is_refused_naming_both_versions():
    from trainer.loop import CHECKPOINT_FORMAT, check_format

    check_format({"format": CHECKPOINT_FORMAT}, "checkpoints/latest.pt")
    with pytest.raises(RuntimeError) as info:
        check_format({"format": CHECKPOINT_FORMAT + 1}, "checkpoints/latest.pt")
    assert f"checkpoints/latest.pt is checkpoint format {CHECKPOINT_FORMAT + 1}, this trainer reads format " \
           f"{CHECKPOINT_FORMAT}" in str(info.value)
