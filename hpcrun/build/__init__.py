"""Rootless Dockerfile builds (hpcrun build): parser, cache, executor."""
