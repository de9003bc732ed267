"""Recurring sweeps that Slurm itself launches: ``hpc sweep schedule|list|remove``.

Two mechanisms behind one small interface (``install(schedule)``, ``remove(schedule)``):
:mod:`hpc.slurm_schedules.scrontab` where the cluster has ``scrontab``, else
:mod:`hpc.slurm_schedules.resubmit` (a self-resubmitting ``--begin`` job). Schedules are
stored by :mod:`hpc.slurm_schedules.store`; each occurrence runs :mod:`hpc.slurm_schedules.fire`.
"""
