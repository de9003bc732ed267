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
