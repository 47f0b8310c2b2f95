"""``submit --smoke``'s options and its projection, without running a trainer: what goes together,
which stages run, and the arithmetic from seconds per step here to hours and dollars on a GPU."""

from __future__ import annotations

import pytest

from runner import smoke
from runner.spec import load_job
from tests.fixtures.jobs import ROOT, make_job


def brad():
    return load_job(ROOT / "jobs" / "brad_finetune.yaml")


@pytest.mark.parametrize("options, says", [
    (smoke.SmokeOptions(smoke=True, smoke_first=True), "give one of them"),
    (smoke.SmokeOptions(steps=10), "--smoke-steps sets up a smoke run: add --smoke"),
    (smoke.SmokeOptions(stage="vqvae", seconds=5), "--smoke-seconds, --stage set up a smoke run"),
    (smoke.SmokeOptions(smoke=True, dry_run=True), "--dry-run plans the job"),
    (smoke.SmokeOptions(smoke=True, steps=0), "--smoke-steps must be 1 or more"),
    (smoke.SmokeOptions(smoke=True, seconds=0), "--smoke-seconds must be more than 0"),
    (smoke.SmokeOptions(smoke=True, stage="mix"), "has the stages vqvae, style_encoder, hybrid"),
])
def test_options_that_do_not_go_together_are_refused(options, says):
    with pytest.raises(smoke.SmokeError, match=says.replace("-", r"\-")):
        smoke._check(brad(), options)


def test_every_stage_in_order_or_the_one_asked_for():
    assert smoke._check(brad(), smoke.SmokeOptions(smoke=True)) == ["vqvae", "style_encoder", "hybrid"]
    assert smoke._check(brad(), smoke.SmokeOptions(smoke=True, stage="hybrid")) == ["hybrid"]
    quick = load_job(ROOT / "jobs" / "quickstart.yaml")
    assert smoke._check(quick, smoke.SmokeOptions(smoke=True)) == [None]
    with pytest.raises(smoke.SmokeError, match="has no stages"):
        smoke._check(quick, smoke.SmokeOptions(smoke=True, stage="x"))


def test_no_smoke_option_changes_nothing():
    assert smoke.before_submit(brad(), smoke.SmokeOptions(dry_run=True, json=True)) is None


def test_a_later_stage_starts_from_the_earlier_stages_smoke_weights_or_fresh():
    job = brad()
    env, notes = smoke._stage_env(job, "hybrid", {"vqvae": "/tmp/vq.pt"}, {"AWS_ACCESS_KEY_ID": "k"})
    assert env["RUNNER_STAGE"] == "hybrid" and env["AWS_ACCESS_KEY_ID"] == "k"
    assert env["RUNNER_INIT_FROM"] == '{"vqvae": "/tmp/vq.pt"}'
    assert any("stage style_encoder was not smoked here" in n for n in notes)
    assert env["PRESET"] == "full"  # the job variables, as the trainer resolves the file with them


def result(**over) -> dict:
    base = {"device": "cpu", "device_name": "x86_64", "recipe": "tiny_gpt", "seconds_per_step": 0.5,
            "batch_size": 16, "job_batch_size": 16, "job_steps": 7200}
    return {**base, **over}


def test_the_projection_from_a_cpu_uses_the_recipes_catalog_figures(tmp_path):
    job = load_job(make_job(tmp_path, {"resources": {"gpu": "rtx4090"}}))
    p = smoke.project(job, None, result())
    assert p["speed_ratio"] == pytest.approx(10 * 1.8)  # tiny_gpt 400k/40k tokens/s, x rtx4090's 1.8
    assert p["hours"] == pytest.approx(7200 * 0.5 / 18 / 3600) and p["hours_here"] == pytest.approx(1.0)
    assert p["usd"] == pytest.approx(p["hours"] * 0.69)  # rtx4090 spot
    assert "tokens/s" in p["speed_ratio_basis"] and "runner/gpus.yaml" in p["speed_ratio_basis"]
    # A batch halved to fit here is scaled back to the job's.
    assert smoke.project(job, None, result(batch_size=8))["hours"] == pytest.approx(2 * p["hours"])
    # A recipe without a CPU figure: the catalog's rough default ratio, said as such.
    p = smoke.project(job, None, result(recipe="vqvae"))
    assert p["speed_ratio"] == pytest.approx(10 * 1.8) and "rough" in p["speed_ratio_basis"]


def test_the_projection_from_a_gpu_uses_the_relative_speeds(tmp_path):
    job = load_job(make_job(tmp_path, {"resources": {"gpu": "h100", "gpu_count": 2, "spot": False}}))
    p = smoke.project(job, None, result(device="cuda", device_name="NVIDIA GeForce RTX 3090"))
    assert p["speed_ratio"] == pytest.approx(4.5) and p["gpu"] == "h100-sxm"
    assert p["usd"] == pytest.approx(p["hours"] * 2.69 * 2)  # on-demand, two GPUs
    unknown = smoke.project(job, None, result(device="cuda", device_name="Some New GPU"))
    assert unknown["speed_ratio"] == pytest.approx(4.5) and "not in the catalog" in unknown["speed_ratio_basis"]


def test_a_job_without_a_gpu_is_projected_onto_the_reference(tmp_path):
    p = smoke.project(load_job(make_job(tmp_path)), None, result())
    assert p["gpu"] == "rtx3090" and "names no GPU" in p["gpu_chosen"]
