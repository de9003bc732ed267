  # Requeue this job only: an array task by its own id, never the whole array.
  id="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
  scontrol requeue "${id:-$SLURM_JOB_ID}" && exit 0
