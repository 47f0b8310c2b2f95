"""The ``recipe: "package.module:function"`` hook: what a user's builder receives, where its module
may live, and the error for each way the name can be wrong."""

from __future__ import annotations

import sys
import textwrap

import pytest

from trainer.config import TrainConfig
from trainer.recipes import Recipe, build_recipe


def config(recipe: str, **options) -> TrainConfig:
    return TrainConfig.model_validate({"model": {"recipe": recipe, "options": options}, "max_steps": 1})


def test_builder_gets_the_train_config_and_its_options(tmp_path):
    recipe = build_recipe(config("tests.fixtures.custom_recipe:build", n_train=64, dim=8), tmp_path / "job.yaml")
    assert isinstance(recipe, Recipe)
    assert len(recipe.train_set) == 64 and recipe.train_set[0][0].shape == (8,)


def test_a_module_beside_the_job_file_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # undo the job folder added to sys.path
    (tmp_path / "my_recipe_beside_job.py").write_text(textwrap.dedent("""
        from tests.fixtures.custom_recipe import build as _build

        def build(cfg, options):
            return _build(cfg, {**options, "n_train": 32})
    """))
    recipe = build_recipe(config("my_recipe_beside_job:build"), tmp_path / "job.yaml")
    assert len(recipe.train_set) == 32


@pytest.mark.parametrize("name,error,message", [
    ("no_such_module_xyz:build", ValueError,
     r"recipe 'no_such_module_xyz:build': no module named 'no_such_module_xyz'; put it beside the job file \(.*\), "
     r"install it, or add its folder to PYTHONPATH"),
    ("tests.fixtures.no_such_module:build", ValueError, r"no module named 'tests\.fixtures\.no_such_module'"),
    ("tests.fixtures.custom_recipe:no_such_function", ValueError,
     r"module 'tests\.fixtures\.custom_recipe' \(.*custom_recipe\.py\) has no function 'no_such_function'"),
    ("tests.fixtures.custom_recipe:WORDS_NOT_HERE", ValueError, r"has no function 'WORDS_NOT_HERE'"),
    ("tests.fixtures.custom_recipe:not_a_recipe", TypeError,
     r"returned dict; it must return trainer\.recipes\.Recipe"),
])
def test_a_wrong_recipe_name_says_what_is_wrong(tmp_path, name, error, message):
    with pytest.raises(error, match=message):
        build_recipe(config(name), tmp_path / "job.yaml")


def test_a_missing_dependency_inside_the_users_module_is_not_hidden(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "recipe_needing_a_package.py").write_text("import package_that_is_not_installed_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="package_that_is_not_installed_xyz"):
        build_recipe(config("recipe_needing_a_package:build"), tmp_path / "job.yaml")
