"""Command-line front ends: ``hpc-launch`` and ``hpc``."""

import gc

from hpc.spec import hydra_light

# Hydra's public API (hydra/__init__.py) loads only if a command uses it: composing
# needs only hydra.core and hydra._internal (see hpc.spec.hydra_light).
hydra_light.install()
# Importing Hydra and composing allocate ~10^5 objects that live until exit: with the
# default first generation (700) a dry run ran ~70 collections, 6% of its time, and
# found almost nothing. Cycles are still collected in a long-lived command (`hpc logs
# -f`, a followed job), only less often.
gc.set_threshold(100_000, 20, 20)
