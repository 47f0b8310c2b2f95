"""A user's own ``module:function`` recipe through the real trainer, and the error a wrong name gives."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from safetensors.torch import load_file

from tests.fixtures.jobs import ROOT, run_trainer
from trainer import contract


def write_job(folder: Path, recipe: str, **train) -> Path:
    doc = {"train": {"seed": 1, "model": {"recipe": recipe, "options": {"dropout": 0.0, "n_train": 256}},
                     "batch_size": 16, "max_steps": 60, "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
                     "schedule": {"warmup_steps": 5}, "eval": {"every_steps": 30, "batches": 4},
                     "checkpoint": {"every_steps": 30}, "logging": {"progress_bar": False}, "threads": 1, **train}}
    path = folder / "job.yaml"
    path.write_text(json.dumps(doc))
    return path


def test_a_recipe_module_beside_the_job_trains_end_to_end(tmp_path):
    # The user's module lives next to the job file, not in an installed package.
    shutil.copy(ROOT / "tests" / "fixtures" / "custom_recipe.py", tmp_path / "my_classifier.py")
    result = run_trainer(write_job(tmp_path, "my_classifier:build"), str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-3000:]

    accuracy = [float(a) for a in re.findall(r"token accuracy ([\d.]+)", result.stderr)]
    assert len(accuracy) == 2 and accuracy[-1] > 0.6  # 4 classes: chance is 0.25; the loop's metrics work for it
    weights = load_file(tmp_path / "run" / "final" / "model.safetensors")  # written by the recipe's save_final
    assert weights["0.weight"].shape == (32, 16) and weights["3.weight"].shape == (4, 32)
    assert json.loads((tmp_path / "run" / contract.STATUS).read_text())["state"] == contract.DONE


def test_a_recipe_that_cannot_be_found_fails_with_a_clear_error(tmp_path):
    result = run_trainer(write_job(tmp_path, "missing_recipe_module:build"), str(tmp_path / "run"))
    assert result.returncode == contract.EXIT_BAD_CONFIG, "a rerun cannot find it either"
    message = "recipe 'missing_recipe_module:build': no module named 'missing_recipe_module'; put it beside the job file"
    assert message in result.stderr
    status = json.loads((tmp_path / "run" / contract.STATUS).read_text())
    assert status["state"] == contract.FAILED and message in status["error"]
