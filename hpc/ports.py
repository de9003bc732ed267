"""The rendezvous port of a scheduled job when none is set: derived from its job id,
so every rank computes the same one (the batch scripts' shell formula says the same)."""

from __future__ import annotations

import re

PORT_BASE, PORT_SPAN = 10000, 20000


def port_for_job(job_id: str) -> int:
    digits = re.sub(r"\D", "", job_id) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN
