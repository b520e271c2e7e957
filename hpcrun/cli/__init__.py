"""Command line. The only place that turns exceptions into exit codes and messages."""
