"""Benchmarks for `make bench`: ratios measured side by side in one run, printed as a table."""
