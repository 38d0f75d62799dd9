"""model-vs-human (Geirhos et al., NeurIPS 2021): its per-trial CSV files, 16 categories and benchmark metrics."""
