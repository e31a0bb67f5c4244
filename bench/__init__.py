"""Benchmarks: each scenario runs its baseline in the same run and reports a ratio."""
