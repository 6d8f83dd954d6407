"""What the offline reports stamp beside their figures (house rule 18): the commit the tree was at, and the
machine that measured.

    python -c "from export import provenance; print(provenance.tree_commit('export'), provenance.machine())"
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def tree_commit(*watched: str) -> str:
    """HEAD's short hash, "+ uncommitted export/ changes" when a watched folder differs from it."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if watched and git("status", "--porcelain", "--", *watched):
        commit += f" + uncommitted {', '.join(f'{folder}/' for folder in watched)} changes"
    return commit


def machine(note: str = "shared with other jobs") -> str:
    """The CPU's model name, its cores and onnxruntime's version."""
    import onnxruntime as ort

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores ({note}), onnxruntime {ort.__version__}"
