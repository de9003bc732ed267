"""Each rank's own account of why it failed, so a launcher can blame the right rank.

When one rank fails (a full disk during its checkpoint, say), its peers fail a
moment later in a collective ("Connection closed by peer"), and whichever
process exits first looks like the culprit. So a failing session writes
``<run_dir>/failures/rank<N>.json``: the error, the time, and whether it is
*secondary* (a lost peer, seen in torch.distributed). :func:`blame` picks the
earliest rank that failed for its own reason.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from hpc.files import write_atomic

DIRECTORY = "failures"
# What a rank sees when a peer died: gloo/NCCL/TCPStore connection errors.
_PEER_LOST = re.compile(
    r"Connection closed by peer|Connection reset by peer|Broken pipe|"
    r"ECONNRESET|EPIPE|Socket Timeout|recvValue failed|Connection refused",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Failure:
    rank: int
    time: float
    error: str
    secondary: bool


def is_secondary(exc: BaseException) -> bool:
    """True for an error that only says a peer went away."""
    try:
        # lazy: torch only in the job
        from torch.distributed import DistNetworkError  # noqa: PLC0415

        if isinstance(exc, DistNetworkError):
            return True
    except ImportError:  # pragma: no cover - torch without distributed
        pass
    return bool(_PEER_LOST.search(str(exc)))


def record(run_dir: Path, rank: int, exc: BaseException) -> None:
    """Write this rank's failure (best effort: the disk may be what failed)."""
    exc = _root_os_error(exc) or exc  # torch.save hides ENOSPC behind a RuntimeError
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    entry = {
        "rank": rank,
        "time": time.time(),
        "error": f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__,
        "secondary": is_secondary(exc),
    }
    with contextlib.suppress(OSError):
        directory = Path(run_dir) / DIRECTORY
        directory.mkdir(exist_ok=True)
        write_atomic(directory / f"rank{rank}.json", json.dumps(entry))


def _root_os_error(exc: BaseException) -> OSError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def clear(run_dir: Path) -> None:
    """Forget the accounts of an earlier attempt."""
    shutil.rmtree(Path(run_dir) / DIRECTORY, ignore_errors=True)


def load(run_dir: Path) -> dict[int, Failure]:
    found: dict[int, Failure] = {}
    for path in (Path(run_dir) / DIRECTORY).glob("rank*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            raw = json.loads(path.read_text())
            failure = Failure(
                int(raw["rank"]), float(raw["time"]), str(raw["error"]), bool(raw["secondary"])
            )
            found[failure.rank] = failure
    return found


def blame(run_dir: Path, failed: list[int]) -> tuple[int, Failure | None]:
    """The rank to name among ``failed`` (in the order their exits were seen).

    The earliest rank that recorded a failure of its own; else the first failed
    rank that did not record a lost peer (it may have crashed hard, or been
    unable to write, e.g. on a full disk); else the first seen.
    """
    accounts = load(run_dir)
    own = [accounts[r] for r in failed if r in accounts and not accounts[r].secondary]
    if own:
        first = min(own, key=lambda f: f.time)
        return first.rank, first
    silent = [r for r in failed if r not in accounts]
    rank = silent[0] if silent else failed[0]
    return rank, accounts.get(rank)
