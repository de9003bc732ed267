"""An example research project run with hpc-launch (see ../README.md)."""
