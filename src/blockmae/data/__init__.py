"""Datasets, caches and the batched on-device input pipeline."""
