"""Defaults that the config schema, the in-job runtime and every Slurm script share.

Defined once here: a light module (``hpc-sbatch`` renders with them without loading
the config stack).
"""

from __future__ import annotations

# The signal that asks a job to checkpoint and stop; SIGUSR2, as NCCL installs its own
# SIGUSR1 handler (NVIDIA/nccl#704). Slurm sends it PREEMPTION_LEAD_S before the limit.
PREEMPTION_SIGNAL = "USR2"
PREEMPTION_LEAD_S = 120
# Once one rank has exited, how long the others may take to follow (srun --wait).
EXIT_GRACE_S = 60.0
# The signal on which every rank dumps its Python stacks (faulthandler) for the hang
# watchdog: SIGURG, ignored by default, so a process without the handler (a data loader,
# the sidecar, srun) is not hurt by it; USR1 is NCCL's, USR2 the preemption signal.
STACK_DUMP_SIGNAL = "URG"
# The hang watchdog's defaults (fault.*, hpc.runtime.watchdog).
STALL_TIMEOUT_S = 600.0
FIRST_STEP_TIMEOUT_S = 1800.0
HANG_REQUEUES = 1
