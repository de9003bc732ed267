"""Exit codes shared by the runtime, the batch scripts and the launchers."""

# A job that checkpointed after a preemption/time-limit signal exits with this
# (EX_TEMPFAIL): "stopped on purpose, resume me". Anything else non-zero is a failure.
PREEMPTED = 75


def shell_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: ``128 + N`` for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode
