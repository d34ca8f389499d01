"""Simulated field devices: realistic-enough feeds for the demo, tests and benchmarks."""
