# The pre-flight check (fault.preflight): one task per node, {{ timeout }}s at most; a
# node that fails it, or does not answer, ends the job before any rank starts.
out="${TMPDIR:-/tmp}/hpc-preflight-${SLURM_JOB_ID}-$$"
timeout -k 5 {{ timeout }} srun --ntasks-per-node=1 --ntasks="$SLURM_JOB_NUM_NODES" \
  --kill-on-bad-exit=0 {{ python }} -m hpc.runtime.preflight "$HPC_CONFIG_FILE" >"$out" 2>&1
preflight=$?
cat "$out"
if [ -z "$sig" ]; then  # a stop signal (preemption, scancel) cut it short: no node to blame
  {{ python }} -m hpc.launchers.slurm.preflight "$HPC_RUN_DIR" "$out" "$preflight" {{ timeout }}
  preflight=$?
fi
rm -f "$out"
