"""Benchmarks behind `blockmae bench ...`: each times blockmae against a peer in the same process."""
