"""Shared test set-up. Tests under tests/integration are marked ``integration`` automatically:
they start real processes, servers or containers. ``pytest -m "not integration"`` runs the fast ones.

Tests that train a model end to end or build and run containers are marked ``slow`` here (or in their
module): a plain ``pytest`` leaves them out so the README's test command ends in minutes on 2 cores;
``pytest -m slow`` runs them and CI runs both (the slow set on two workers, then the ``serial`` tests,
which hold a time budget, alone; see .ci/run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.s3 import s3_bucket, s3_server  # noqa: F401  (a real SeaweedFS S3 server)

# No test may reach RunPod: a key or base URL in the shell that runs the tests must not leak into
# the runners and trainers they start (RunPod tests point these at the local emulator themselves).
for _name in [n for n in os.environ if n.startswith("RUNPOD_")]:
    del os.environ[_name]

# OpenMP threads that wait sleep instead of spinning. The slow set runs two workers on two cores, each
# starting trainers of two threads: spinning threads then take the cores the other worker's trainer needs
# (two quickstart trainers side by side: 35 s spinning, 17 s sleeping; one alone: 13.5 s either way).
# How threads wait changes no result: a run's weights are the same bit for bit. Set before torch loads
# (OpenMP reads it once), and inherited by every trainer the tests start; test containers get it from
# their job's env (tests/fixtures/docker.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent


#: Test modules (relative to tests/integration) that train a model end to end, build images or run
#: containers: each takes from half a minute to several minutes on 2 cores.
SLOW_MODULES = frozenset({
    # images and containers on the Docker engine
    "docker/test_compose.py", "docker/test_detach_build.py", "docker/test_docker_backend.py",
    "docker/test_docker_secrets.py", "docker/test_engine.py", "docker/test_image.py",
    "docker/test_preflight_images.py", "docker/test_prune.py", "docker/test_supervisor_mode.py",
    # the runner following real trainers through preemptions, restarts, budgets and pipelines
    "runner/test_brad_pipeline.py", "runner/test_cost_budget.py", "runner/test_multi_process_local.py",
    "runner/test_pipeline.py", "runner/test_policy.py", "runner/test_preemption.py", "runner/test_pull.py",
    "runner/test_quickstart.py", "runner/test_runner_restart.py", "runner/test_smoke.py",
    # the same on the RunPod emulator, whose pods are real trainers
    "runpod/test_cancel_runpod.py", "runpod/test_cost_runpod.py", "runpod/test_multi_gpu_runpod.py",
    "runpod/test_pipeline_runpod.py", "runpod/test_quickstart_runpod.py",
    "runpod/test_runner_killed_and_spot_refused.py", "runpod/test_supervisor_elsewhere.py",
    "runpod/test_supervisor_on_runpod.py",
    # the trainer's own end-to-end runs
    "storage/test_s3_trainer.py", "trainer/",
})


#: The longest groups of the slow set (several minutes each on 2 cores), handed to workers first so that the
#: parallel run does not end on one of them alone.
LONGEST_FIRST = ("docker", "project/test_fresh_clone.py", "runpod/test_pipeline_runpod.py",
                 "runner/test_brad_pipeline.py", "trainer/test_resume.py", "runner/test_smoke.py",
                 "trainer/test_distributed.py", "storage/test_s3_trainer.py")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the xdist_group marks into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
            where = "/".join(parts[parts.index("integration") + 1:])
            if where in SLOW_MODULES or any(m.endswith("/") and where.startswith(m) for m in SLOW_MODULES):
                item.add_marker(pytest.mark.slow)
            # Under `pytest -n N --dist loadgroup` (CI's slow run) a module stays on one worker, so its
            # module-scoped fixtures are made once; the tests on the Docker engine share it, its images
            # and its prune, so they all stay on one worker, one after another.
            on_docker = where.startswith("docker/") or "docker_engine" in getattr(item, "fixturenames", ())
            item.add_marker(pytest.mark.xdist_group("docker" if on_docker else where))
    if getattr(config.option, "numprocesses", None):  # only under pytest -n: a plain run keeps the file order
        def rank(item) -> int:
            group = item.get_closest_marker("xdist_group")
            name = group.args[0] if group and group.args else ""
            return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        items.sort(key=rank)  # stable: within a group, the file's order


@pytest.fixture
def repo_root() -> Path:
    return ROOT
