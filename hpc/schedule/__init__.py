"""Recurring sweeps that Slurm itself launches: ``hpc sweep schedule|list|remove``.

Two mechanisms behind one small interface (``install(schedule)``, ``remove(schedule)``):
:mod:`hpc.schedule.scrontab` where the cluster has ``scrontab``, else
:mod:`hpc.schedule.resubmit` (a self-resubmitting ``--begin`` job). Schedules are
stored by :mod:`hpc.schedule.store`; each occurrence runs :mod:`hpc.schedule.fire`.
"""
