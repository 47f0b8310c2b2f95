"""How long the trainer takes from SIGTERM to a clean exit with its emergency checkpoint written,
for a small state (the quickstart) and a large one. Spot machines give only a few seconds.

    python bench/bench_emergency_save.py

The time splits into finishing the optimizer step in progress (at most one step) and writing the
checkpoint; the trainer logs both, and this script also times the whole thing from outside.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.jobs import make_job, start_trainer, wait_for  # noqa: E402
from trainer import contract  # noqa: E402

CASES = {
    "quickstart (120k parameters)": {"train": {"max_steps": 100_000}},
    "4x512 GPT (13M parameters)": {"train": {"max_steps": 100_000, "model": {"n_layer": 4, "n_embd": 512, "n_head": 8},
                                            "batch_size": 4}},
}


def measure(name: str, overrides: dict) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-emergency-"))
    overrides["train"]["checkpoint"] = {"every_steps": 5, "every_minutes": None, "keep_last": 2}
    job = make_job(folder, overrides)
    run = folder / "run"
    proc = start_trainer(job, str(run), log_path=folder / "out.log")
    try:
        wait_for(lambda: (run / (contract.step_checkpoint(10) + contract.CHECKSUM_SUFFIX)).exists() or proc.poll() is not None,
                 timeout=600, what="two checkpoints")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
        total = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (run / contract.TRAINER_LOG).read_text()
    m = re.search(r"emergency checkpoint at step (\d+) \(the signal came after step (\d+)\) written in ([\d.]+)s", text)
    size_mb = (run / contract.LATEST).stat().st_size / 1e6
    assert code == contract.EXIT_INTERRUPTED and m, text[-2000:]
    print(f"{name:32s} state {size_mb:7.1f} MB | SIGTERM to exit {total:5.2f} s | checkpoint write {float(m.group(3)):5.2f} s "
          f"| steps finished after the signal: {int(m.group(1)) - int(m.group(2))}")


def main() -> None:
    for name, overrides in CASES.items():
        measure(name, overrides)


if __name__ == "__main__":
    subprocess.run([sys.executable, "-c", "pass"])  # warm the interpreter's file cache
    main()
