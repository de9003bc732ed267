"""The accounting sampler outside a container: ``python -m hpc.accounting.host RUN_DIR``.

A container image often has no NVML (no nvidia-ml-py, or no driver library mounted),
so when the ranks run in a container (``container.host_sampler``, on by default) the
batch script starts this once per node, outside the container, beside the step
(``srun --overlap``), and the ranks do not sample (``HPC_ACCOUNTING_ON_HOST=1``).
It writes the same ``<run_dir>/accounting/node<N>.jsonl`` the in-job sampler would:
NVML from the host, CPU and RSS of this user's processes whose environment names the
run dir (the ranks, seen from the host: Pyxis and Apptainer share its PID namespace).
SIGUSR1 (the batch shell, once the step ended; srun forwards it to the task without
ending the step itself, as it would on SIGTERM), SIGTERM or SIGINT write the stop
record and exit.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import yaml

from hpc.accounting.prometheus import prometheus_labels
from hpc.accounting.sampler import Sampler, SamplerConfig

ON_HOST_ENV = "HPC_ACCOUNTING_ON_HOST"  # set for the ranks: the host samples instead


def config_for(run_dir: Path, environ: dict[str, str]) -> SamplerConfig | None:
    """This node's sampler for the run (None: accounting is off)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    acct = cfg.get("accounting") or {}
    if not acct.get("enabled", True):
        return None
    node = int(environ.get("SLURM_NODEID") or 0)
    return SamplerConfig(
        path=run_dir / "accounting" / f"node{node}.jsonl",
        interval_s=float(acct.get("interval_s", 10.0)),
        env_match=("HPC_RUN_DIR", str(run_dir)),
        job_id=environ.get("HPC_JOB_ID"),
        idle=dict(acct.get("idle") or {}) or None,
        prometheus_dir=acct.get("prometheus_textfile"),
        labels=prometheus_labels(cfg, environ.get("HPC_JOB_ID")),
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hpc.accounting.host RUN_DIR", file=sys.stderr)
        return 2
    config = config_for(Path(args[0]), dict(os.environ))
    if config is None:
        return 0
    done = threading.Event()
    for signum in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with Sampler(config):
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
