"""The in-job side: rank discovery, the training session, tracking, checkpoints.

Nothing here is imported on the submit path.
"""
