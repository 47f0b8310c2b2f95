from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import EXIT_BAD_INPUT, main
from runner.spec import load_job
from tests.fixtures.jobs import ROOT, make_job
from trainer.jobfile import JobFileError


def test_the_example_jobs_validate():
    quick = load_job(ROOT / "jobs" / "quickstart.yaml")
    assert (quick.name, quick.backend, quick.gpus, quick.storage_root) == ("quickstart", "local", (), None)
    lora = load_job(ROOT / "jobs" / "gpt2_lora.yaml")
    assert lora.backend == "runpod"
    assert [g.alias for g in lora.gpus] == ["rtx3090"]
    assert lora.spec.resources.spot and lora.spec.budget.max_usd > 0
    assert lora.storage_root.startswith("s3://")
    assert lora.train.model.recipe == "causal_lm_lora"
    assert set(lora.spec.secrets) >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"}


def test_the_users_job_is_the_three_stage_music_pipeline_and_its_tiny_preset_is_small():
    full = load_job(ROOT / "jobs" / "brad_finetune.yaml")
    stages = full.spec.stages
    assert list(stages) == ["vqvae", "style_encoder", "hybrid"]
    assert [s.train.model.recipe for s in stages.values()] == ["vqvae", "style_encoder", "hybrid"]
    assert stages["style_encoder"].inputs() == {"vqvae": "vqvae"}
    assert stages["hybrid"].inputs() == {"vqvae": "vqvae", "style_encoder": "style_encoder"}
    assert stages["hybrid"].train.optimizer.lr == 5e-6 and stages["hybrid"].train.batch_size == 16
    assert {s.train.data.train for s in stages.values()} == {"s3://my-datasets/maestro-v3/", "s3://my-datasets/pijama/",
                                                              "s3://my-datasets/brad-mehldau/"}
    tiny = load_job(ROOT / "jobs" / "brad_finetune.yaml", backend="local",
                    env={"PRESET": "tiny", "STORAGE": "/tmp/brad-runs", "BRAD": "s3://other/brad/"})
    for name, stage in tiny.spec.stages.items():
        assert stage.train.model.size == "tiny" and stage.train.max_steps <= 150, name
        assert stage.train.data.midi.window == 64 and stage.train.precision == "fp32"
    assert tiny.spec.stages["hybrid"].train.data.train == "s3://other/brad/"
    assert tiny.storage_root == "/tmp/brad-runs"
    assert tiny.spec.stages["hybrid"].train.optimizer.lr == 5e-6  # the preset leaves what it does not name
    with pytest.raises(JobFileError, match="preset: 'huge' is not one of the file's presets"):
        load_job(ROOT / "jobs" / "brad_finetune.yaml", env={"PRESET": "huge"})


def test_the_users_job_plans_three_stages_with_hours_and_a_total(runner_home: Path, capsys):
    import json

    main(["submit", str(ROOT / "jobs" / "brad_finetune.yaml"), "--gpu", "rtx3090", "--dry-run", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in plan["stages"]] == ["vqvae", "style_encoder", "hybrid"]
    hours = [s["estimated_hours"] for s in plan["stages"]]
    assert 9 < hours[0] < 11  # stage 1 is sized to about 10 h on an RTX 3090 (the job file's arithmetic)
    assert plan["estimated_hours"] == pytest.approx(sum(hours))
    assert 0 < plan["estimated_usd"] < 15
    assert not runner_home.exists()


def test_gpu_override_replaces_the_file_and_accepts_a_failover_list(tmp_path: Path):
    job = make_job(tmp_path, {"resources": {"gpu": "a4000"}})
    assert [g.alias for g in load_job(job).gpus] == ["a4000"]
    overridden = load_job(job, gpu="rtx3090, NVIDIA GeForce RTX 4090")
    assert [g.alias for g in overridden.gpus] == ["rtx3090", "rtx4090"]
    assert overridden.spec.resources.gpu == ["rtx3090", "rtx4090"]


def test_unknown_gpu_override_names_the_flag_and_the_closest(tmp_path: Path):
    with pytest.raises(JobFileError) as e:
        load_job(make_job(tmp_path), gpu="h1OO")
    assert "--gpu: unknown GPU 'h1OO'; closest known: h100-sxm" in str(e.value)


def test_backend_override_applies_the_backend_rules(tmp_path: Path):
    with pytest.raises(JobFileError) as e:
        load_job(make_job(tmp_path), backend="runpod")
    message = str(e.value)
    assert "storage: required for the runpod backend" in message
    assert "resources.gpu: required for the runpod backend" in message


def test_all_problems_are_reported_at_once_in_line_order(tmp_path: Path):
    job = make_job(tmp_path, {"resources": {"gpu": "rtx3909", "gpu_count": 0}, "budget": {"max_usd": -1}})
    with pytest.raises(JobFileError) as e:
        load_job(job)
    assert len(e.value.problems) == 3
    lines = [int(p.split(":")[1]) for p in e.value.problems]
    assert lines == sorted(lines)


def test_env_values_become_text_and_name_defaults_to_the_file(tmp_path: Path):
    path = make_job(tmp_path, {"name": None, "env": {"STEPS": 3, "FAST": True, "RATIO": 0.5, "TOKENIZERS_PARALLELISM": "false"}},
                    name="my_job.yaml")
    job = load_job(path)
    assert job.name == "my_job"
    assert job.spec.env_text() == {"STEPS": "3", "FAST": "true", "RATIO": "0.5", "TOKENIZERS_PARALLELISM": "false"}


def test_local_storage_is_relative_to_the_job_file(tmp_path: Path):
    job = load_job(make_job(tmp_path / "jobs", {"storage": "../runs"}))
    assert job.storage_root == str((tmp_path / "runs").resolve())
    assert load_job(make_job(tmp_path, {"storage": "s3://bucket-1/prefix/"})).storage_root == "s3://bucket-1/prefix"


def test_remote_jobs_do_not_need_local_data(tmp_path: Path):
    path = make_job(tmp_path, {"backend": "runpod", "storage": "s3://bucket-1/runs", "resources": {"gpu": "rtx3090"},
                               "train": {"data": {"train": "data/only-in-the-image.txt"}}})
    assert load_job(path).backend == "runpod"
    with pytest.raises(JobFileError, match="file not found"):
        load_job(path, backend="local")


def test_the_record_kept_in_the_state_has_names_not_values(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "value-that-must-stay-in-the-shell")
    job = load_job(make_job(tmp_path, {"secrets": ["MY_SERVICE_TOKEN"]}))
    record = job.spec.record()
    assert "MY_SERVICE_TOKEN" in record and "value-that-must-stay-in-the-shell" not in record


def test_submit_refuses_a_secret_that_is_not_set_and_writes_nothing(tmp_path: Path, runner_home: Path, capsys, monkeypatch):
    monkeypatch.delenv("SURELY_UNSET_TOKEN", raising=False)
    job = make_job(tmp_path, {"secrets": ["SURELY_UNSET_TOKEN"]})
    with pytest.raises(SystemExit) as e:
        main(["submit", str(job)])
    assert e.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "SURELY_UNSET_TOKEN is listed but not set in this shell; export it" in err
    assert not runner_home.exists()


def test_submit_to_an_unknown_backend_names_the_choices_and_writes_nothing(tmp_path: Path, runner_home: Path,
                                                                           capsys):
    job = make_job(tmp_path, {"storage": "s3://bucket-1/runs", "resources": {"gpu": "rtx3090"}})
    with pytest.raises(SystemExit) as e:
        main(["submit", str(job), "--backend", "kubernetes"])
    assert e.value.code == EXIT_BAD_INPUT
    assert "unknown backend 'kubernetes'; expected one of: local, docker, runpod" in capsys.readouterr().err
    assert not runner_home.exists()


def test_dry_run_prints_the_plan_and_launches_nothing(runner_home: Path, capsys):
    import json

    main(["submit", str(ROOT / "jobs" / "gpt2_lora.yaml"), "--dry-run", "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend"] == "runpod" and plan["gpu"] == ["rtx3090"] and plan["capacity"] == "spot"
    assert plan["rate_per_hour"] == pytest.approx(0.34)
    assert plan["on_demand_rate_per_hour"] == pytest.approx(0.44)
    assert plan["steps"] == 150
    # 150 steps of 1 x 16 x 512 tokens at the catalog's ~5,000 tokens/s on an RTX 3090.
    assert plan["estimated_hours"] == pytest.approx(150 * 16 * 512 / 5000 / 3600)
    assert plan["estimated_usd"] == pytest.approx(plan["estimated_hours"] * 0.34)
    main(["submit", str(ROOT / "jobs" / "gpt2_lora.yaml"), "--dry-run", "--gpu", "rtx4090"])
    text = capsys.readouterr().out
    assert "rtx4090" in text and "$0.69/h spot (on-demand $0.79/h)" in text and "nothing launched" in text
    assert not runner_home.exists()
