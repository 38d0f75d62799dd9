"""Evaluations of frozen encoders: features, linear and k-NN probes, shape bias."""
