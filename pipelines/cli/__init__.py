"""The ``pcc`` command: one group per layer, errors handled once in :func:`main`."""
