"""The digits job's schema and value rules (``configs/job/digits.yaml`` extends it).

Found by :func:`hpc.spec.schema.job_schemas` (every ``hpc.jobs.*_config`` module's ``SCHEMAS``);
its :meth:`check` runs in validation for a job section built from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpc.spec.errors import ConfigError
from hpc.spec.schema import JobConfig


@dataclass
class DigitsJobConfig(JobConfig):
    name: str = "digits"
    entrypoint: str = "hpc.jobs.digits:main"
    lr: float = 0.05
    epochs: int = 8
    batch_size: int = 32
    hidden: int = 64

    @classmethod
    def check(cls, job: dict[str, Any]) -> None:
        for key in ("epochs", "batch_size", "hidden"):
            if key in job and (job[key] is None or job[key] < 1):
                raise ConfigError(f"job.{key}", f"must be >= 1, got {job[key]!r}")
        if "lr" in job and not job["lr"] > 0:
            raise ConfigError("job.lr", f"must be > 0, got {job['lr']!r}")


SCHEMAS: dict[str, type[JobConfig]] = {"digits": DigitsJobConfig}
