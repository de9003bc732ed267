"""The digits job, reporting on the sidecar (tests/test_tracking_sidecar.py).

After each checkpoint rank 0 writes its sidecar's pid to ``sidecar.pid`` in the run
directory (-1 without one); with ``KILL_AT_STEP`` set, rank 0 is then killed
(SIGKILL) right after that step's checkpoint. At exit every rank prints whether
mlflow was imported into its process.
"""

import os
import signal
import sys

from hpc.jobs import digits
from hpc.runtime.session import Session, load_config

KILL_AT_STEP = int(os.environ.get("KILL_AT_STEP") or 0)
save_checkpoint = Session.save_checkpoint


def save_and_report(self, step, state):  # type: ignore[no-untyped-def]
    path = save_checkpoint(self, step, state)
    if self.is_main:
        sidecar = getattr(self.tracker, "sidecar", None)
        (self.run_dir / "sidecar.pid").write_text(str(sidecar.proc.pid if sidecar else -1))
        if step == KILL_AT_STEP:
            os.kill(os.getpid(), signal.SIGKILL)
    return path


Session.save_checkpoint = save_and_report  # type: ignore[method-assign]
code = digits.main(load_config())
rank = os.environ.get("RANK")
print(f"hpc-test: rank {rank} mlflow imported: {'mlflow' in sys.modules}", flush=True)
sys.exit(code)
