"""infra/setup-docker-host.sh tags the local base image with a hash of what shapes it, so an edit
elsewhere in the script (a message, the Compose install, the engine's start) reuses the image
instead of a five-minute rebuild, and an edit to how the image is built, to the torch pin or to the
dependencies makes a new one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "infra" / "setup-docker-host.sh"


def inputs_hash(script_text: str, tmp: Path, pyproject: str | None = None, **env: str) -> str:
    """The script's ``inputs_hash`` for this text, in a copy of the project's layout (its functions only)."""
    (tmp / "infra").mkdir(parents=True, exist_ok=True)
    functions = script_text.split("\ninstall_packages\n", 1)[0]  # the calls at the end run the steps
    (tmp / "infra" / "setup.sh").write_text(functions)
    (tmp / "pyproject.toml").write_text(pyproject or (ROOT / "pyproject.toml").read_text())
    done = subprocess.run(["bash", "-c", f"source {tmp / 'infra' / 'setup.sh'}; inputs_hash"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin:/usr/local/bin", **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_base_image_hash_follows_only_what_shapes_the_image(tmp_path: Path):
    assert shutil.which("bash")
    text = SCRIPT.read_text()
    assert "\ninstall_packages\n" in text and "build_base_image() {" in text
    base = inputs_hash(text, tmp_path / "a")
    assert len(base) == 12

    unrelated = text.replace('say "installing ${missing[*]}"', 'say "now installing: ${missing[*]}"')
    unrelated = unrelated.replace("# --- 2. the engine", "# a comment\n# --- 2. the engine")
    assert unrelated != text
    assert inputs_hash(unrelated, tmp_path / "b") == base

    recipe = text.replace("--variant=minbase", "--variant=buildd")
    assert recipe != text and inputs_hash(recipe, tmp_path / "c") != base
    assert inputs_hash(text, tmp_path / "d", SPOT_TORCH="torch==2.12.0") != base
    deps = (ROOT / "pyproject.toml").read_text().replace('"pyyaml>=6",', '"pyyaml>=6.0.1",')
    assert inputs_hash(text, tmp_path / "e", pyproject=deps) != base
