"""The benchmarks: each measures a part of the product beside its baseline, in the same run.

They live in the repository, not in the installed package: `python -m bench ingest|rules|api|
simulators [options]` from a checkout (`make bench` runs the suite). Benchmark code may import
any package; no product package imports it.
"""
