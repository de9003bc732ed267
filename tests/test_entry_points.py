"""hpc.entry_points reads the same entry points, in the same order, as importlib.metadata
(the stale checkout egg-info and a PYTHONPATH backend included), and loads them."""

from __future__ import annotations

import subprocess
import sys

from support import FIXTURES, REPO

SNIPPET = """
import sys
sys.path.insert(0, "")
from importlib.metadata import distributions
from hpc.entry_points import entry_points
for group in ("console_scripts", "hpc_launch.launchers", "hpc_launch.job_schemas"):
    ours = [(e.name, e.value) for e in entry_points(group)]
    theirs = [(e.name, e.value)
              for d in distributions() for e in d.entry_points.select(group=group)]
    assert ours == theirs, (group, ours, theirs)
    assert ours, group
(toy,) = [e for e in entry_points("hpc_launch.launchers") if e.name == "toy"]
assert toy.load().__name__ == "ToyLauncher"
print("same")
"""


def test_same_as_importlib_metadata():
    env = {"PYTHONPATH": str(FIXTURES / "toy_backend"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", SNIPPET], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "same\n"


def test_load_follows_a_dotted_attribute():
    from hpc.entry_points import EntryPoint

    entry = EntryPoint("x", "hpc.entry_points:EntryPoint.load", "g")
    assert entry.load() is EntryPoint.load
