"""Schedules as ``scrontab`` entries (Slurm's cron), where the cluster has it.

Each schedule is one marked block in the user's scrontab::

    # >>> hpc-launch schedule NAME ID: managed by `hpc sweep` ...
    #SCRON --job-name=hpc-sched-NAME
    #SCRON ...
    MIN HOUR DOM MON DOW HPC_STATE_DIR=... exec PYTHON -m hpc.slurm_schedules.fire NAME ID
    # <<< hpc-launch schedule NAME

Everything outside the blocks is the user's and is written back byte for byte.
``scrontab`` has no "install this file" mode (only ``-e`` through an editor), so
an edit runs ``scrontab -e`` with ``VISUAL`` set to a tiny helper script that
first compares the crontab scrontab just fetched with the one we read (and
refuses, exit 3, if someone changed it in between) and then writes our version.
The whole read-modify-write runs under a lock (``schedules/.scrontab.lock``)
against other ``hpc`` processes, is retried from a fresh read when the compare
fails, and is checked by reading the crontab back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hpc.files import file_lock
from hpc.launchers.slurm import client
from hpc.slurm_schedules import resubmit, store
from hpc.slurm_schedules.store import DuplicateError, Schedule

NAME = "scrontab"
BEGIN = "# >>> hpc-launch schedule {name} "
END = "# <<< hpc-launch schedule {name}"
ATTEMPTS = 6
CHANGED_EXIT = 3

EDITOR_HELPER = """#!/bin/sh
# VISUAL for `scrontab -e` when hpc sweep edits the crontab (see hpc/slurm_schedules/scrontab.py).
if [ -n "$HPC_SCRONTAB_NONE" ]; then
  # There was no crontab: scrontab shows its template, comments only. Anything
  # else was written by someone else since we looked.
  if grep -qv '^[[:space:]]*\\(#.*\\)\\{0,1\\}$' "$1"; then
    echo changed > "$HPC_SCRONTAB_CHANGED"; exit 3
  fi
elif ! cmp -s "$1" "$HPC_SCRONTAB_EXPECT"; then
  echo changed > "$HPC_SCRONTAB_CHANGED"; exit 3
fi
cat "$HPC_SCRONTAB_NEW" > "$1"
"""


def problem() -> str | None:
    """Why scrontab cannot be used here, or None."""
    if shutil.which("scrontab") is None:
        return "scrontab not found on this host (Debian's Slurm packages do not ship it)"
    try:
        params = client.config_value("ScronParameters") or ""
    except client.SlurmError as exc:
        return f"cannot read the Slurm config ({exc})"
    if "enable" not in params.lower():
        return "scrontab is disabled on this cluster (ScronParameters has no 'enable')"
    return None


def block(schedule: Schedule) -> list[str]:
    directives = resubmit.sbatch_directives(schedule)
    return [
        BEGIN.format(name=schedule.name)
        + f"{schedule.id}: managed by `hpc sweep`, remove with `hpc sweep remove {schedule.name}`",
        *[f"#SCRON {d}" for d in directives],
        f"{schedule.cron} {resubmit.fire_command(schedule)}",
        END.format(name=schedule.name),
    ]


def find_block(text: str, name: str) -> tuple[int, int] | None:
    """Line span [start, end] of ``name``'s block in ``text``."""
    lines = text.splitlines()
    begin, end = BEGIN.format(name=name), END.format(name=name)
    for i, line in enumerate(lines):
        if line.startswith(begin):
            for j in range(i + 1, len(lines)):
                if lines[j].rstrip() == end:
                    return i, j
            return i, len(lines) - 1
    return None


def names(text: str) -> list[str]:
    prefix = BEGIN.format(name="")
    return [ln[len(prefix) :].split()[0] for ln in text.splitlines() if ln.startswith(prefix)]


def with_block(text: str, schedule: Schedule) -> str:
    if find_block(text, schedule.name):
        raise DuplicateError(
            "--name", f"{schedule.name!r}: the scrontab already has a block for this name"
        )
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n".join(block(schedule)) + "\n"


def without_block(text: str, name: str) -> str:
    span = find_block(text, name)
    if not span:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[: span[0]] + lines[span[1] + 1 :])


def read() -> str | None:
    """The user's scrontab as ``scrontab -l`` prints it; None when there is none."""
    try:
        return client.run(["scrontab", "-l"], retries=3)
    except client.SlurmError as exc:
        if "no crontab for" in str(exc):
            return None
        raise


def _lock() -> contextlib.AbstractContextManager[None]:
    return file_lock(store.directory() / ".scrontab.lock")


def edit(transform: Callable[[str], str], check: Callable[[str], bool]) -> str:
    """Read, transform, write (compare-before-write), read back; return the new text."""
    with _lock(), tempfile.TemporaryDirectory(prefix="hpc-scrontab-") as tmp:
        helper = Path(tmp) / "editor"
        helper.write_text(EDITOR_HELPER)
        helper.chmod(0o700)
        for _ in range(ATTEMPTS):
            before = read()
            new = transform(before or "")
            (Path(tmp) / "new").write_text(new)
            (Path(tmp) / "expect").write_text(before or "")
            changed = Path(tmp) / "changed"
            changed.unlink(missing_ok=True)
            env = dict(os.environ)
            env.update(
                VISUAL=str(helper),
                EDITOR=str(helper),
                HPC_SCRONTAB_NEW=str(Path(tmp) / "new"),
                HPC_SCRONTAB_EXPECT=str(Path(tmp) / "expect"),
                HPC_SCRONTAB_CHANGED=str(changed),
                TMPDIR=tmp,
            )
            env.pop("HPC_SCRONTAB_NONE", None)
            if before is None:
                env["HPC_SCRONTAB_NONE"] = "1"
            proc = subprocess.run(
                ["scrontab", "-e"],
                input="n\nn\n",  # "retry the edit?" after a rejected line: no
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            if changed.exists():
                continue  # someone edited it since we read it: start again
            if proc.returncode != 0:
                raise client.SlurmError(
                    _one_line(proc.stderr or proc.stdout) or "scrontab -e failed"
                )
            after = read() or ""
            if check(after):
                return after
            message = _one_line(proc.stdout)
            raise client.SlurmError(
                f"scrontab did not take the change{': ' + message if message else ''}"
            )
    raise client.SlurmError(
        f"the scrontab kept changing while hpc sweep edited it ({ATTEMPTS} tries); try again"
    )


def _one_line(text: str) -> str:
    return "; ".join(ln.strip() for ln in (text or "").splitlines() if ln.strip())


def install(schedule: Schedule) -> None:
    edit(
        lambda text: with_block(text, schedule),
        lambda after: (
            (span := find_block(after, schedule.name)) is not None
            and after.splitlines()[span[0] : span[1] + 1] == block(schedule)
        ),
    )


def remove(schedule: Schedule) -> list[str]:
    edit(
        lambda text: without_block(text, schedule.name),
        lambda after: find_block(after, schedule.name) is None,
    )
    return [f"removed its scrontab lines ({schedule.job_name})"]
