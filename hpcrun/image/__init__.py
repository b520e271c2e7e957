"""Images: references, registry client, node-local store, layers, squashfs, archives.

Kept import-free so `hpcrun run` pays only for what it uses (see resolve.for_run).
"""
