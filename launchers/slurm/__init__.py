"""The Slurm backend: :mod:`.launcher` (plan = an sbatch script, submit through sbatch),
:mod:`.render` (the one batch-script renderer, templates in ``slurm/templates``),
:mod:`.client` (the Slurm CLI), and the batch script's own steps (:mod:`.job_steps`,
:mod:`.requeue`, :mod:`.sweep_task`).

Empty on purpose: ``hpc-sbatch`` renders through :mod:`.render` without loading
the launcher and its config stack.
"""
