"""Exit codes shared by the runtime, the batch scripts and the launchers."""

# A job that checkpointed after a preemption/time-limit signal exits with this
# (EX_TEMPFAIL): "stopped on purpose, resume me". Anything else non-zero is a failure.
PREEMPTED = 75
