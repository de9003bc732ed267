# preemption.mode=resubmit: before it runs, this job queues its successor. The successor
# starts only if this job ends not OK (a checkpointed stop, preemption by cancellation,
# a lost node), resumes the run dir, and is cancelled once this job is not to run again.
export HPC_RESTART_COUNT="${HPC_RESUBMIT_COUNT:-0}" HPC_SUCCESSOR=""
if HPC_SUCCESSOR=$(
  for v in $(compgen -e); do  # this job's own SLURM_* settings are not the successor's
    case $v in SLURM_CONF) ;; SLURM_*) unset "$v" ;; esac
  done
  HPC_RESUBMIT_COUNT=$((HPC_RESTART_COUNT + 1)) sbatch --parsable \
    --dependency="afternotok:$HPC_JOB_ID" --kill-on-invalid-dep=yes {{ script }}
); then
  HPC_SUCCESSOR="${HPC_SUCCESSOR%%;*}"
  echo "hpc-launch: successor job $HPC_SUCCESSOR queued (it runs if job $HPC_JOB_ID ends not OK)"
else
  HPC_SUCCESSOR=""; echo "hpc-launch: warning: could not queue a successor; a stop ends the run"
fi
