"""Stores: a Field written to ``train.zarr`` (prepare, statistics, split, chunking), its reader
(:mod:`~simdiff.data.stores.training`), and the latent store ``latents.zarr``.
"""
