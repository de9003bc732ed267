"""Sweeps as data: ``-m`` overrides expanded into tasks, and the sweep record
(sweep.json). Backends submit them (:meth:`hpc.backend.Launcher.submit_sweep`)."""
