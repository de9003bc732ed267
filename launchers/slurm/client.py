"""Talk to Slurm: sbatch, squeue, sacct, scontrol, scancel.

The CLI is the default. pyslurm is used for submission instead when it imports
and was built for the installed Slurm (same major.minor); on PyPI it exists only
for Slurm 25.11, so most sites use the CLI.

Transient controller errors (socket timeouts, slurmctld restarting) are retried
with bounded exponential backoff. A submission carries a unique token in its
``--comment``; before retrying a submission whose answer was lost, the queue is
searched for that token, so a retry never submits twice.
"""

from __future__ import annotations

import functools
import logging
import re
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hpc.launchers.base import SubmitError

log = logging.getLogger(__name__)

TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Connection refused|"
    r"Zero Bytes were transmitted|Slurm temporarily unable|Resource temporarily unavailable|"
    r"slurm_receive_msg|Communication connection failure|Transport endpoint|"
    r"Slurm backup controller in standby|Unable to establish control machine address",
    re.I,
)


class SlurmError(SubmitError):
    """Slurm rejected a request; ``str()`` is Slurm's own message."""


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    exit_code: int | None = None
    reason: str = ""


def run(
    args: Sequence[str],
    *,
    retries: int = 5,
    backoff_s: float = 1.0,
    input_text: str | None = None,
    timeout_s: float = 60,
) -> str:
    """Run a Slurm command; retry transient controller errors; return stdout."""
    delay = backoff_s
    for attempt in range(retries + 1):
        try:
            proc = subprocess.run(
                list(args), capture_output=True, text=True, input=input_text, timeout=timeout_s
            )
        except FileNotFoundError:
            raise SlurmError(f"{args[0]}: not found (is Slurm installed on this host?)") from None
        except subprocess.TimeoutExpired:
            message = f"{args[0]} timed out after {timeout_s:.0f}s"
        else:
            if proc.returncode == 0:
                return proc.stdout
            text = (proc.stderr or proc.stdout).strip()
            # One line: Slurm's own lines, verbatim, joined.
            message = "; ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or (
                f"{args[0]} exit {proc.returncode}"
            )
            if not TRANSIENT.search(message):
                raise SlurmError(message)
        if attempt == retries:
            raise SlurmError(f"{message} (gave up after {retries + 1} tries)")
        log.warning("%s: %s; retrying in %.1fs", args[0], message, delay)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def submit(
    script_path: str,
    args: Iterable[str] = (),
    *,
    script_args: Iterable[str] = (),
    retries: int = 5,
    backoff_s: float = 1.0,
) -> str:
    """Submit a batch script; return the job id (an array's id for ``--array``)."""
    token = f"hpc-launch:{uuid.uuid4().hex}"
    args, script_args = list(args), list(script_args)
    if _pyslurm_usable() and not args and not script_args:
        return _submit_pyslurm(script_path, token)
    cmd = ["sbatch", "--parsable", f"--comment={token}", *args, script_path, *script_args]
    delay = backoff_s
    for attempt in range(retries + 1):
        try:
            out = run(cmd, retries=0)
            return out.strip().split(";")[0]
        except SlurmError as exc:
            if not TRANSIENT.search(str(exc)) or attempt == retries:
                raise SlurmError(str(exc).split(" (gave up")[0]) from None
            log.warning("sbatch: %s; retrying in %.1fs", exc, delay)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
        found = _find_by_comment(token, retries=retries)
        if found:  # the first try went through; its answer was lost
            return found
    raise AssertionError("unreachable")


def _find_by_comment(token: str, retries: int) -> str | None:
    out = run(["squeue", "-h", "-a", "-r", "-o", "%i|%k"], retries=retries)
    for line in out.splitlines():
        job_id, _, comment = line.partition("|")
        if comment.strip() == token:
            return job_id.split("_")[0].strip()
    return None


def states(job_ids: Sequence[str], *, retries: int = 3) -> dict[str, JobState]:
    """States of several jobs in one batched query (squeue, then sacct, then scontrol)."""
    if not job_ids:
        return {}
    found: dict[str, JobState] = {}
    out = run(["squeue", "-h", "-a", "-j", ",".join(job_ids), "-o", "%i|%T|%r"], retries=retries)
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) == 3:
            found[parts[0].strip()] = JobState(parts[0].strip(), parts[1].strip(), None, parts[2])
    missing = [j for j in job_ids if j not in found]
    if missing:
        try:
            out = run(
                ["sacct", "-X", "-n", "-P", "-j", ",".join(missing), "-o", "JobID,State,ExitCode"],
                retries=retries,
            )
            for line in out.splitlines():
                job_id, state, code = [*line.split("|"), "", ""][:3]
                found.setdefault(job_id, JobState(job_id, state.split()[0], _exit(code)))
        except SlurmError as exc:  # accounting off: ask the controller, one job at a time
            log.debug("sacct unavailable (%s): falling back to scontrol", exc)
            for job_id in missing:
                known = _scontrol_state(job_id)
                if known:
                    found[job_id] = known
    return found


def _scontrol_state(job_id: str) -> JobState | None:
    try:
        out = run(["scontrol", "show", "job", "-o", job_id], retries=1)
    except SlurmError:
        return None
    state = re.search(r"\bJobState=(\S+)", out)
    code = re.search(r"\bExitCode=(\S+)", out)
    if not state:
        return None
    return JobState(job_id, state.group(1), _exit(code.group(1) if code else ""))


def _exit(text: str) -> int | None:
    match = re.match(r"(\d+):(\d+)", text.strip())
    if not match:
        return None
    code, signal = int(match.group(1)), int(match.group(2))
    return code if code or not signal else 128 + signal


def cancel(job_id: str, signal: str | None = None, batch_only: bool = False) -> None:
    cmd = ["scancel"]
    if signal:
        cmd.append(f"--signal={signal}")
    if batch_only:
        cmd.append("--batch")
    run([*cmd, job_id])


def config_value(name: str) -> str | None:
    """One value of ``scontrol show config`` (e.g. MaxArraySize)."""
    out = run(["scontrol", "show", "config"])
    match = re.search(rf"^{re.escape(name)}\s*=\s*(\S+)", out, re.M)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=1)
def slurm_version() -> str | None:
    try:
        out = subprocess.run(["sbatch", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"(\d+\.\d+)", out)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=1)
def _pyslurm_usable() -> bool:
    try:
        import pyslurm  # noqa: PLC0415 (lazy: optional pyslurm)
    except Exception:
        return False
    built_for = re.search(r"(\d+\.\d+)", str(getattr(pyslurm, "__version__", "")))
    return bool(built_for and built_for.group(1) == slurm_version())


def _submit_pyslurm(script_path: str, token: str) -> str:
    """Submit through libslurm (pyslurm >= 23 API); options come from the #SBATCH lines."""
    import pyslurm  # noqa: PLC0415 (lazy: optional pyslurm)

    with open(script_path, encoding="utf-8") as fh:
        desc = pyslurm.JobSubmitDescription(script=fh.read(), comment=token)
    if hasattr(desc, "load_sbatch_options"):
        desc.load_sbatch_options()  # the script's #SBATCH lines
    return str(desc.submit())
