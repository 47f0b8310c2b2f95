"""The command line starts fast and light: no torch, no pydantic/yaml/rich for --help."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.jobs import ROOT, trainer_env

PROBE = """
import sys, runner.cli
try:
    runner.cli.main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "pydantic", "yaml", "rich", "numpy", "boto3") if m in sys.modules)
print("HEAVY", heavy, file=sys.stderr)
"""


def probe(args: list[str], home) -> tuple[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT,
                          env=trainer_env(RUNNER_HOME=str(home)), timeout=60)
    heavy_line = [ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY")][-1]
    return done.stdout, eval(heavy_line.removeprefix("HEAVY "))


def test_help_lists_the_commands_and_imports_nothing_heavy(runner_home):
    out, heavy = probe(["--help"], runner_home)
    for command in ("submit", "status", "list", "logs", "cancel", "watch", "gpus", "cost"):
        assert command in out
    assert heavy == []


def test_status_without_state_creates_nothing_and_never_imports_torch(runner_home):
    out, heavy = probe(["status"], runner_home)
    assert "No jobs yet" in out
    assert "torch" not in heavy and "pydantic" not in heavy
    assert not runner_home.exists()


def test_gpus_and_empty_lists_as_json(runner_home):
    env = trainer_env(RUNNER_HOME=str(runner_home))
    run = lambda *a: subprocess.run([sys.executable, "-m", "runner", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=ROOT, env=env, timeout=60)
    gpus = json.loads(run("gpus", "--json").stdout)
    assert {"alias": "rtx3090", "spot_per_hour": 0.34, "on_demand_per_hour": 0.44}.items() <= gpus[0].items()
    assert json.loads(run("list", "--json").stdout) == []
    assert json.loads(run("status", "--json").stdout) == []
    assert json.loads(run("cost", "--json").stdout)["jobs"] == []
    missing = run("status", "nope")
    assert missing.returncode == 2 and "no job was ever submitted here" in missing.stderr
    assert not runner_home.exists()
