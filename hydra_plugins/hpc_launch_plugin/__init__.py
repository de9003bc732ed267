"""Hydra launcher plugin: ``hydra/launcher=hpc_slurm`` (or ``hpc_local``) sends an
existing Hydra app's ``-m`` sweep through hpc-launch as ONE Slurm job array.

Hydra imports every module of the ``hydra_plugins`` namespace at start-up, so the
modules here import only Hydra at module level; Slurm code loads when a sweep is
launched.
"""
