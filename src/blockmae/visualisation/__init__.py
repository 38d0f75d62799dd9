"""Figures: reconstructions of masked images (`reconstructions`)."""
