"""Outside values in rendered scripts, plans and manifests: one line each, never run.

Every renderer (batch scripts, the hpc-sbatch wrapper, schedule jobs, scrontab
lines, plan texts, manifest headers) puts paths and values through these:

* :func:`shell_word` — one bash word, on one line. Plain values get
  ``shlex.quote``; a value holding a control character (newline, CR, ...), a
  Unicode line separator or a byte that was not UTF-8 (a surrogate escape from
  ``os.fsdecode``) gets bash's ``$'...'`` form with ``\\n``/``\\xHH`` escapes,
  which stands for exactly the original bytes. Comment lines that show a path or
  value use the same form, so a newline can never end a comment (or the
  ``#SBATCH`` block sbatch reads, which stops at the first non-comment line).
* :func:`one_line` — for places no quoting helps (a crontab line run by
  ``/bin/sh``): a ConfigError naming the key when the value is not one plain line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from hpc.spec.errors import ConfigError

# What a shell, sbatch or a line-splitting reader (Python's splitlines) may act on.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def is_plain(text: str) -> bool:
    """True when ``text`` holds no control character, line separator or stray byte."""
    return not _UNSAFE.search(text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if _UNSAFE.match(char):
        return "".join(f"\\x{b:02x}" for b in char.encode("utf-8"))
    return char


def shell_word(value: object) -> str:
    """``value`` as one bash word on one line (the same bytes once bash reads it)."""
    text = str(value)
    if is_plain(text):
        return shlex.quote(text)
    return "$'" + "".join(map(_escape, text)) + "'"


def shell_join(words: Iterable[object]) -> str:
    return " ".join(shell_word(w) for w in words)


def one_line(key: str, value: object) -> str:
    """``value`` as text; ConfigError (``key``) when it is not one plain line."""
    text = str(value)
    if not is_plain(text):
        raise ConfigError(
            key, f"{shell_word(text)} holds a newline or control character; use a plain value"
        )
    return text
