"""hpc-launch: Hydra configs to distributed PyTorch jobs on Slurm, Kubernetes or locally."""

__version__ = "0.1.0"
