#!/bin/bash
# hpc-sbatch: wrapper around job.sh; the original runs unchanged
#SBATCH --signal=B:USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --time=00:05:00

# --- hpc-launch preamble ---
export HPC_LAUNCHER=hpc-sbatch
export HPC_JOB_ID="$SLURM_JOB_ID" HPC_RESTART_COUNT="${SLURM_RESTART_COUNT:-0}"
export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
export MASTER_PORT="${MASTER_PORT:-$(( 10000 + ${SLURM_JOB_ID:-0} % 20000 ))}"
original="${TMPDIR:-/tmp}/hpc-sbatch-${SLURM_JOB_ID:-$$}.orig"
cat > "$original" <<'HPC_SBATCH_ORIGINAL_X'
#!/bin/bash
#SBATCH --time=00:05:00
srun hostname
HPC_SBATCH_ORIGINAL_X
chmod +x "$original"
# The original runs in its own process group so that the preemption signal
# (USR2) or SIGTERM reaches it and every step it started.
setsid "$original" 'a b' &
child=$!
interrupted=0
forward() { interrupted=1; kill -s "$1" -- "-$child" 2>/dev/null || true; }
trap 'forward USR2' USR2
trap 'forward TERM' TERM
while :; do
  interrupted=0; wait "$child"; rc=$?
  [ "$interrupted" = 1 ] || break
done
rm -rf "$original" "$original.bin"
exit "$rc"
