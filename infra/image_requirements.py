"""Print the image's Python requirements, from pyproject.toml alone (the Dockerfile's dependency layer).

Usage: python image_requirements.py PYPROJECT REQUIREMENTS_OUT CONSTRAINTS_OUT

The requirements are the runner's dependencies and the trainer's ``train`` extra. The constraints
pin the torch the base image already has (a CUDA build, or the tests' CPU build): pip must never
swap it for another wheel of several gigabytes. Standard library only; Python 3.10+ (tomllib or
a fallback that reads the two arrays we need)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import sys


def _load(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: no tomllib; the project table is simple enough
        with open(path, encoding="utf-8") as f:
            text = f.read()

        def array(name: str) -> list[str]:
            m = re.search(rf"^{name}\s*=\s*\[(.*?)\]", text, re.S | re.M)
            return re.findall(r'"([^"]+)"', m.group(1)) if m else []

        return {"dependencies": array("dependencies"), "optional-dependencies": {"train": array("train")}}
    with open(path, "rb") as f:
        return tomllib.load(f)["project"]


def main(pyproject: str, requirements: str, constraints: str) -> None:
    project = _load(pyproject)
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["train"])
    with open(requirements, "w", encoding="utf-8") as f:
        f.write("\n".join(wanted) + "\n")
    pins = []
    # No torch in the base: pip installs the one the requirements ask for.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        pins.append(f"torch=={importlib.metadata.version('torch')}")
    with open(constraints, "w", encoding="utf-8") as f:
        f.write("\n".join(pins) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
