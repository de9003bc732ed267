"""Exit codes shared by the runtime, the batch scripts and the launchers."""

# A job that checkpointed after a preemption/time-limit signal exits with this
# (EX_TEMPFAIL): "stopped on purpose, resume me". Anything else non-zero is a failure.
PREEMPTED = 75
# The hang watchdog ended the job: no rank made progress (or one fell behind) for too long
# (hpc.runtime.watchdog). Stacks are in <run_dir>/hangs/; the state is FAILED_HANG.
FAILED_HANG = 76
# The idle policy (accounting.idle, action stop) ended the job: a GPU was idle for a whole
# window; it checkpointed first. State COMPLETED_IDLE: not a failure, not requeued.
COMPLETED_IDLE = 77
# hpc-launch refused to submit: a budget (budgets.yaml, policy refuse) would be exceeded
# (EX_NOPERM). Nothing was submitted; one line names the budget (hpc.cost.guard).
# A node failed the pre-flight check (hpc.runtime.preflight) before any rank started:
# the node is named in job.json and joins the run's exclusion list. State FAILED_PREFLIGHT.
PREFLIGHT_FAILED = 78
# A node of the job was lost during the run (hpc.launchers.slurm.nodeloss) and no
# resubmission without it is left (fault.node_resubmits). State NODE_LOST.
NODE_LOST = 79
# hpc-launch refused to submit: a budget (budgets.yaml, policy refuse) would be exceeded.
# Nothing was submitted; one line names the budget (hpc.cost.guard).
BUDGET_REFUSED = 80


def shell_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: ``128 + N`` for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode
