"""Training entry points shipped with hpc-launch (installed as ``hpc.jobs``)."""
