# Not to run again (finished, failed, or no requeue): the successor is not needed.
if [ "${resubmitted:-0}" != 1 ] && [ -n "$HPC_SUCCESSOR" ]; then
  scancel "$HPC_SUCCESSOR" && echo "hpc-launch: successor job $HPC_SUCCESSOR cancelled"
fi
