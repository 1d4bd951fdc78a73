"""Benchmarks: each ``bench_*.py`` module exposes ``main(argv=None)``; ``python -m bench`` runs them all."""
