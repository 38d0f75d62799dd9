"""Benchmarks (`blockmae bench ...`): each times our implementation against a peer in the same process."""
