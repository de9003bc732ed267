"""Command-line front ends: ``hpc-launch`` and ``hpc``."""

from hpc.spec import hydra_light

# Hydra's public API (hydra/__init__.py) loads only if a command uses it: composing
# needs only hydra.core and hydra._internal (see hpc.spec.hydra_light).
hydra_light.install()
