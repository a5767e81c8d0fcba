"""Stage 5, running the study: one cell end to end, the grid spec and its runner, and the
executors that run cells locally or on Slurm.
"""
