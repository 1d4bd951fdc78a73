"""The batch views, each built from the one per-vehicle annotation pass (``annotate``)."""
