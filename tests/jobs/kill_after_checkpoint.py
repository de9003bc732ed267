"""The digits job, with rank 0 killed (SIGKILL) right after it saved one checkpoint.

``KILL_AT_STEP`` names the step. The kill happens once per run directory (a
``killed`` marker there), so a resume of the run trains to its end.
"""

import os
import signal
import sys

from hpc.jobs import digits
from hpc.runtime.session import Session, load_config

KILL_AT_STEP = int(os.environ["KILL_AT_STEP"])
save_checkpoint = Session.save_checkpoint


def save_then_die(self, step, state):  # type: ignore[no-untyped-def]
    path = save_checkpoint(self, step, state)
    marker = self.run_dir / "killed"
    if self.is_main and step == KILL_AT_STEP and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return path


Session.save_checkpoint = save_then_die  # type: ignore[method-assign]
sys.exit(digits.main(load_config()))
