"""Checks on rendered scripts, written independently of the renderers (imported by tests)."""

from __future__ import annotations

import shlex


def sbatch_block(script: bytes | str) -> list[str]:
    """The options sbatch reads from a script's ``#SBATCH`` lines, as Slurm parses them.

    Slurm splits the script at ``\\n`` only; a line that starts with ``#SBATCH`` (first
    column) holds options, up to an unquoted ``#``; blank lines and other comment lines
    are skipped; the first other line ends the block.
    """
    data = script.encode("utf-8", "surrogateescape") if isinstance(script, str) else script
    options: list[str] = []
    for raw in data.split(b"\n"):
        line = raw.decode("utf-8", "surrogateescape")
        if line.startswith("#SBATCH"):
            lexer = shlex.shlex(line[len("#SBATCH") :], posix=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            options += list(lexer)
        elif line.strip() and not line.lstrip().startswith("#"):
            break
    return options


def no_raw_control(text: str) -> list[str]:
    """Lines holding a control character other than tab (each rendered line is one line)."""
    return [ln for ln in text.split("\n") if any(ord(c) < 32 and c != "\t" for c in ln)]
