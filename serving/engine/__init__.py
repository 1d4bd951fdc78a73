"""The query engine: the merged views, the sandbox that decides what a consumer's SQL may reach,
the lineage that meters it, and the run of a checked query on a pinned snapshot."""
