"""Fixtures for the slurm tests."""
