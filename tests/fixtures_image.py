"""Fixtures for the image tests."""
