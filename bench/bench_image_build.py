"""Image build times: a rebuild after a code-only change against a full build, in the same run,
and the image's size above its base.

    python bench/bench_image_build.py [--repeats 3]

Needs a Docker engine and the local base image (``sudo infra/setup-docker-host.sh`` on Debian).
Every build is the runner's own (``runner.backends.docker_image``), on a copy of the project.

A full build on ``spot-runner-base:cpu`` would be unfairly cheap: that base already holds every
dependency. So the full build starts from a base like the CUDA PyTorch image: torch and nothing
else of the project's, with the dependencies' wheels in a folder of the base (``PIP_FIND_LINKS``,
``PIP_NO_INDEX``) so pip installs them without any network. The full build runs with the layer
cache off; each code-only rebuild changes one line of ``trainer/contract.py`` and keeps the cache.
Target: a code-only rebuild takes at most 10% of a full build.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from runner.backends.docker_client import connect  # noqa: E402
from runner.backends.docker_image import build, plan_build  # noqa: E402
from runner.spec import Image  # noqa: E402
from tests.fixtures.jobs import copy_project  # noqa: E402

BASE = "spot-runner-base:cpu"
BENCH_BASE = "spot-runner-bench-base"
PROJECT = ("Dockerfile", ".dockerignore", "pyproject.toml", "runner", "trainer", "infra/image_requirements.py",
           "infra/compose/create_bucket.py", "jobs/quickstart.yaml", "jobs/data")

# Run inside a container of the base: uninstall every distribution that neither torch nor pip needs.
UNINSTALL = r"""
import importlib.metadata as md, re, subprocess, sys
def name(s): return re.split(r"[ ;<>=!~\[(]", s.strip(), maxsplit=1)[0].lower().replace("_", "-")
keep, todo = set(), ["torch", "pip", "setuptools", "wheel"]
while todo:
    n = todo.pop()
    if n in keep: continue
    keep.add(n)
    try: reqs = md.requires(n) or []
    except md.PackageNotFoundError: continue
    todo += [name(r) for r in reqs if "extra ==" not in r]
gone = sorted({name(d.metadata["Name"]) for d in md.distributions()} - keep)
subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *gone])
print(len(gone))
"""


def console() -> Console:
    return Console(stderr=True, highlight=False)


def requirements() -> list[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["train"])


def bench_base(client, out: Console) -> str:
    """A base with torch but without the project's other dependencies, their wheels at /wheels."""
    reqs = requirements()
    tag = f"{BENCH_BASE}:{hashlib.sha256(json.dumps([client.images.get(BASE).id, reqs]).encode()).hexdigest()[:12]}"
    try:
        client.images.get(tag)
        return tag
    except Exception:
        pass
    out.print(f"making {tag} (once): torch only, the dependencies as wheels")
    with tempfile.TemporaryDirectory() as tmp:
        torch = client.containers.run(BASE, ["python", "-c", "import torch; print(torch.__version__)"],
                                      network_mode="host", remove=True).decode().strip()
        wheels = Path(tmp) / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), f"torch=={torch}", *reqs],
                       check=True)
        for w in wheels.glob("torch-*.whl"):
            w.unlink()  # in the base already
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as t:
            t.add(wheels, arcname="wheels")
        container = client.containers.create(BASE, ["python", "-c", UNINSTALL], network_mode="host")
        try:
            container.start()
            if container.wait()["StatusCode"] != 0:
                raise SystemExit(container.logs().decode())
            container.put_archive("/", archive.getvalue())
            container.commit(repository=BENCH_BASE, tag=tag.split(":")[1],
                             changes=["ENV PIP_FIND_LINKS=/wheels PIP_NO_INDEX=1"])
        finally:
            container.remove(force=True)
    return tag


def timed_build(client, job: Path, base: str, out: Console, logs: Path, nocache: bool = False) -> tuple[float, str]:
    started = time.perf_counter()  # hashing the inputs is part of what a launch pays
    plan = plan_build(client, job, Image(base=base))
    build(client, plan, out, logs, nocache=nocache)
    return time.perf_counter() - started, plan.tag


def size_above(client, image: str, base: str) -> float:
    return (client.images.get(image).attrs["Size"] - client.images.get(base).attrs["Size"]) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="code-only rebuilds (the median is reported)")
    args = parser.parse_args()
    client = connect()
    out = Console(file=io.StringIO())  # build progress is not part of the measurement's output
    log = console()
    base = bench_base(client, log)
    built: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_project(Path(tmp) / "project", PROJECT)
        job = project / "jobs" / "quickstart.yaml"
        logs = Path(tmp) / "logs"
        logs.mkdir()
        log.print("full build (no layer cache) on a torch-only base ...")
        full, tag = timed_build(client, job, base, out, logs, nocache=True)
        built.append(tag)
        full_size = size_above(client, tag, base)
        code = []
        contract = project / "trainer" / "contract.py"
        for i in range(args.repeats):
            contract.write_text(contract.read_text() + f"\n# code change {i}\n")
            seconds, tag = timed_build(client, job, base, out, logs)
            built.append(tag)
            code.append(seconds)
            log.print(f"code-only rebuild {i + 1}: {seconds:.1f}s")
        started = time.perf_counter()
        plan_build(client, job, Image(base=base))  # what a relaunch of an unchanged job costs
        unchanged = time.perf_counter() - started
        # The image the tests and a Debian CPU host run: on the base that has the dependencies.
        _, cpu_tag = timed_build(client, job, BASE, out, logs)
        built.append(cpu_tag)
        cpu_size = size_above(client, cpu_tag, BASE)
    for tag in built:
        with contextlib.suppress(Exception):  # still used by another tag: fine
            client.images.remove(tag)
    median = statistics.median(code)
    result = {
        "full_build_s": round(full, 1),
        "code_only_rebuild_s": round(median, 2),
        "code_only_rebuilds_s": [round(c, 2) for c in code],
        "ratio": round(median / full, 3),
        "target_ratio": 0.10,
        "unchanged_job_hash_s": round(unchanged, 3),
        "size_above_torch_only_base_mb": round(full_size, 1),
        "size_above_cpu_base_mb": round(cpu_size, 2),
        "engine": client.version()["Version"],
    }
    print(json.dumps(result, indent=2))
    verdict = "meets" if result["ratio"] <= 0.10 else "misses"
    log.print(f"code-only rebuild {median:.1f}s = {median / full:.1%} of a full build ({full:.0f}s): {verdict} the "
              f"10% target; image {full_size:.0f} MB above a torch-only base, {cpu_size:.1f} MB above {BASE}")


if __name__ == "__main__":
    main()
