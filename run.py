#!/usr/bin/env python3
"""Bootstrap graft on a machine that has nothing but Python 3.11+.

    python3 run.py demo          # create .venv if needed, install graft, run `graft demo`
    python3 run.py test          # same set-up, then the whole test suite (what CI runs)
    python3 run.py ARGS...       # any other graft command, e.g. `python3 run.py train DATA`

The virtual environment lives in `.venv/` beside this file. It is (re)installed when
pyproject.toml changes, so a pull that adds a dependency is picked up automatically.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".graft-installed"


def _wanted_stamp() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_env() -> None:
    """Create the venv and install graft (editable, with test extras) unless already current."""
    if sys.version_info < (3, 11):  # noqa: UP036 - run by whatever python3 the user has
        sys.exit(f"graft needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if STAMP.exists() and STAMP.read_text().strip() == _wanted_stamp() and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"run.py: creating virtual environment in {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    print("run.py: installing graft and its dependencies (first run takes a few minutes)", flush=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", ".[test]"],
        cwd=ROOT,
        check=True,
    )
    STAMP.write_text(_wanted_stamp())


def main(argv: list[str]) -> int:
    ensure_env()
    args = argv or ["demo"]
    if args[0] == "test":
        return subprocess.call([str(PYTHON), "-m", "pytest", *args[1:]], cwd=ROOT)
    # Other commands run from the caller's folder, so relative data paths keep their meaning.
    return subprocess.call([str(PYTHON), "-m", "graft", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
