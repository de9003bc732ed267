#!/bin/bash
# hpc-sbatch: wrapper around {{ origin }}; the original runs unchanged
{{ directives }}
{{ user_directives }}
# --- hpc-launch preamble ---
export HPC_LAUNCHER=hpc-sbatch
export HPC_JOB_ID="$SLURM_JOB_ID" HPC_RESTART_COUNT="${SLURM_RESTART_COUNT:-0}"
export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"
export MASTER_PORT="${MASTER_PORT:-{{ master_port }}}"
original="${TMPDIR:-/tmp}/hpc-sbatch-${SLURM_JOB_ID:-$$}.orig"
cat > "$original" <<'{{ delimiter }}'
{{ original }}{{ delimiter }}
{{ truncate }}chmod +x "$original"
{{ srun }}# The original runs in its own process group so that the preemption signal
# ({{ signal }}) or SIGTERM reaches it and every step it started.
{{ command }} &
child=$!
interrupted=0
forward() { interrupted=1; kill -s "$1" -- "-$child" 2>/dev/null || true; }
trap 'forward {{ signal }}' {{ signal }}
trap 'forward TERM' TERM
while :; do
  interrupted=0; wait "$child"; rc=$?
  [ "$interrupted" = 1 ] || break
done
rm -rf "$original" "$original.bin"
exit "$rc"
