"""Launchers: one package or module per backend behind the interface in :mod:`hpc.backend`.

They are found through the entry points of group ``hpc_launch.launchers``
(:mod:`hpc.registry`, which imports only the backend asked for). Empty on purpose,
so that a backend's light parts (the Slurm renderer for ``hpc-sbatch``) import
without the rest.
"""
