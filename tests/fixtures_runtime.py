"""Fixtures for the runtime tests."""
