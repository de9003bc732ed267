"""A job that finishes through the Session, then holds its process's exit.

After the session has written FINISHED and closed, an exit handler (the workers
leave through ``hpc.run.exit_without_teardown``, which runs atexit handlers last,
just before ``os._exit``) writes ``exiting.<rank>`` (holding its pid) into the run
directory and waits, up to 60 s, for a ``release`` file there. Tests send their
stop signal in that window: the moment a signal "just after the end" kills a
process that does not ignore it.
"""

import atexit
import os
import time

from hpc.runtime.session import Session


class HoldShutdown:
    def __init__(self, run_dir: str, rank: int) -> None:
        self.marker = os.path.join(run_dir, f"exiting.{rank}")
        self.release = os.path.join(run_dir, "release")
        # Bound now: module globals are being cleared when __del__ runs.
        self.os_open, self.os_write, self.os_close = os.open, os.write, os.close
        self.exists, self.sleep, self.clock = os.path.exists, time.sleep, time.monotonic
        self.pid = os.getpid()
        self.flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC

    def __call__(self) -> None:
        fd = self.os_open(self.marker, self.flags, 0o644)
        self.os_write(fd, str(self.pid).encode())
        self.os_close(fd)
        deadline = self.clock() + 60
        while not self.exists(self.release) and self.clock() < deadline:
            self.sleep(0.02)


with Session.from_env() as s:
    s.save_checkpoint(1, {"step": 1})
    print(f"rank {s.rank} done", flush=True)
atexit.register(HoldShutdown(str(s.run_dir), s.rank))
