"""Rendezvous ports: a scheduled job's, derived from its job id so that every rank
computes the same one (the batch scripts' shell formula says the same), and the one
free-port picker for launchers that start every rank themselves."""

from __future__ import annotations

import re

PORT_BASE, PORT_SPAN = 10000, 20000


def port_for_job(job_id: str) -> int:
    digits = re.sub(r"\D", "", job_id) or "0"
    return PORT_BASE + int(digits) % PORT_SPAN


def free_port(host: str = "") -> int:
    """A TCP port free on ``host`` (``""``: every interface) at the time of asking."""
    import socket  # noqa: PLC0415 (lazy: a dry run plans without it)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
