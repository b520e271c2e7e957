"""Instances: long-lived containers a user starts, enters (`hpcrun exec`) and stops.

state      where records live (a private directory), reading and checking them
lifecycle  start (plan a container, hand it to the C supervisor), stop, clean
observe    what the debugging verbs read: processes, stats, logs, diff, cp, commit

The supervisor is PID 1 of the instance (cext/core.c, hpcrun_instance); no daemon of
the user's, no systemd, no D-Bus.
"""
