"""Workflow tools in hpcrun containers: a sample DAG (generate, compress, sort, merge
sequence-like data) for Makeflow and Snakemake, images for it, and the Snakemake
front end (`hpcrun snakemake`). See README section "workflows"."""
