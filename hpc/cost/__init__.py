"""Cost reports: sacct readers (every shape), price tables, aggregation and rendering.

Entry point for the CLI: :func:`hpc.cost.cli.main`. Nothing here imports torch or mlflow.
"""
