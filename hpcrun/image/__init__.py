"""Images: references, registry client (registry, auth), node-local store (store:
blobs, records, tags, locks, leases; inuse: the /proc scan; fstree), format builders
(formats, squash, layers), archives and convert.

Kept import-free so `hpcrun run` pays only for what it uses (see resolve.for_run).
"""
