"""Mosaic-IT: several instructions concatenated into one example, by the paper's rules."""
