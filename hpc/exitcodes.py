"""Exit codes shared by the runtime, the batch scripts and the launchers."""

# A job that checkpointed after a preemption/time-limit signal exits with this
# (EX_TEMPFAIL): "stopped on purpose, resume me". Anything else non-zero is a failure.
PREEMPTED = 75
# The hang watchdog ended the job: no rank made progress (or one fell behind) for too long
# (hpc.runtime.watchdog). Stacks are in <run_dir>/hangs/; the state is FAILED_HANG.
FAILED_HANG = 76


def shell_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: ``128 + N`` for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode
