"""A live progress line (state, elapsed, last rank-0 line) while a job runs.

Rank-0 output goes to stdout line by line. The live line is drawn on the
terminal only when both stdout and stderr are terminals, so redirected output
stays plain text.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.text import Text

from hpc.backend import JobHandle


class Progress:
    def __init__(self, handle: JobHandle, name: str) -> None:
        self.handle = handle
        self.name = name
        self.start = time.monotonic()
        self.live: Live | None = None
        self.interactive = sys.stdout.isatty() and sys.stderr.isatty()

    def __rich__(self) -> Text:
        elapsed = int(time.monotonic() - self.start)
        last = (self.handle.last_line or "")[-80:]
        return Text.assemble(
            (f"{self.name} ", "bold"),
            (f"{self.handle.status()} ", "cyan"),
            f"{elapsed // 60:02d}:{elapsed % 60:02d}  ",
            (last, "dim"),
        )

    def _line(self, line: str) -> None:
        if self.live is not None:
            self.live.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    def __enter__(self) -> Progress:
        self.handle.on_line = self._line
        if self.interactive:
            self.live = Live(
                self,
                console=Console(stderr=True),
                refresh_per_second=4,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()
        return self

    def wait(self) -> int:
        return int(self.handle.wait())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            self.live.stop()
