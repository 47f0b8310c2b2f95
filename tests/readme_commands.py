"""The two commands README.md starts with: the quickstart and the test command.

CI (`.ci/run`) and the fresh-clone test run exactly what the README says, read from it here, so the README
cannot drift from what is tested. Standard library only: `.ci/run` calls this before anything is installed.

    python3 tests/readme_commands.py quickstart|test
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
#: The paragraph that introduces each command, as the README words it.
INTRODUCED_BY = {"quickstart": "Run the quickstart", "test": "Run the tests"}


def readme_command(which: str, readme: Path = README) -> str:
    """The first indented (code) line after the paragraph that starts with INTRODUCED_BY[which]."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    intro = INTRODUCED_BY[which]
    for i, line in enumerate(lines):
        if line.startswith(intro):
            for code in lines[i + 1:]:
                if code.startswith("    ") and code.strip():
                    return code.strip()
                if code.strip() and not code.startswith("    "):
                    break
    raise LookupError(f"{readme}: no indented command after a paragraph starting {intro!r}")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in INTRODUCED_BY:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(INTRODUCED_BY)}")
    print(readme_command(sys.argv[1]))
