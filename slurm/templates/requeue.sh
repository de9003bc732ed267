  # Requeue this job only: an array task by its own id, never the whole array. A busy
  # controller can time out: three tries (a job Slurm cannot requeue fails all three).
  id="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
  for attempt in 1 2 3; do
    scontrol requeue "${id:-$SLURM_JOB_ID}" && exit 0
    echo "hpc-launch: scontrol requeue failed (try ${attempt} of 3)" >&2; sleep 2
  done
