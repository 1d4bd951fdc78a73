"""The fraud rules as they were before issue 22 (commit 769f6e3), frozen: the baseline of ``rules.kernel``.

``bench.bench_simulator`` times this ``check_event`` and ``assess_vehicle``
against ``pipelines.rules``'s on the same events in the same run.  Never edit.
"""
