"""hpc-sbatch on the real test cluster: hostile script paths, scripts that are not UTF-8."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from render_checks import sbatch_block

from slurm_helpers import require_cluster, wait_for_job
from support import cli_env

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _cluster() -> None:
    require_cluster(min_nodes=1)


def hpc_sbatch(args: list[str | bytes], workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpc.cli.sbatch", *args],
        cwd=workdir,
        env=cli_env(workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored_script(job_id: str) -> bytes:
    """The batch script exactly as slurmctld holds it."""
    return subprocess.run(
        ["scontrol", "write", "batch_script", job_id, "-"],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job`` fields (the controller keeps a finished job for MinJobAge)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def test_script_path_with_newlines_is_not_run(workdir: Path) -> None:
    # The reproduction: hpc-sbatch "$(printf 'evil\ntouch PWNED\n.sh')"
    path = "evil\ntouch PWNED\n.sh"
    (workdir / path).write_text(
        "#!/bin/bash\n#SBATCH --time=7\n#SBATCH --job-name=sbatch-newline-path\n"
        'echo "original ran"\n'
    )
    proc = hpc_sbatch(["--parsable", "-o", f"{workdir}/out-%j.txt", path], workdir)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    stored = stored_script(job_id)
    assert wait_for_job(job_id, timeout=120) == "COMPLETED"
    assert "original ran" in (workdir / f"out-{job_id}.txt").read_text()
    assert not list(workdir.rglob("PWNED")), "the script path was run as a command"
    block = sbatch_block(stored)
    assert {"--signal=B:USR2@120", "--requeue", "--time=7"} <= set(block), block
    fields = job_fields(job_id)
    assert (fields["JobName"], fields["TimeLimit"]) == ("sbatch-newline-path", "00:07:00")


def test_script_that_is_not_utf8_runs_byte_for_byte(workdir: Path) -> None:
    # Slurm takes any bytes but NUL; the wrapper promises the original unchanged.
    copy = workdir / "copy"
    original = (
        b"#!/bin/bash\n#SBATCH --time=3\n#SBATCH --job-name=sbatch-latin1 # caf\xe9\n"
        b"# r\xe9sum\xe9 \xff\xfe\n"
        b'printf "%s" "caf\xe9" > ' + str(workdir / "arg").encode() + b"\n"
        b'cat "$0" > ' + str(copy).encode()  # no final newline: kept too
    )
    path = os.fsencode(workdir) + b"/caf\xe9 \xff.sh"
    Path(os.fsdecode(path)).write_bytes(original)
    proc = hpc_sbatch(["--parsable", "-o", f"{workdir}/out-%j.txt", path], workdir)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert wait_for_job(job_id, timeout=120) == "COMPLETED"
    assert copy.read_bytes() == original
    assert (workdir / "arg").read_bytes() == b"caf\xe9"
    fields = job_fields(job_id)
    assert (fields["JobName"], fields["TimeLimit"]) == ("sbatch-latin1", "00:03:00")
