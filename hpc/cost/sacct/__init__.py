"""sacct readers (Slurm only): every output shape into allocations."""
