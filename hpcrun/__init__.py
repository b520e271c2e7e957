"""hpcrun: rootless containers for HPC batch jobs."""

__version__ = "0.1.0"
