"""Command-line front ends: ``hpc-launch`` and ``hpc``."""
