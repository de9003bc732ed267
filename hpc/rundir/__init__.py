"""Run directories: the run record (job.json), its FINISHED marker, and the index
of recent runs."""
