"""Fused attention kernels behind `instructjax.model.attention` (one file per kernel)."""
