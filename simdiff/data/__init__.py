"""Data layer: the one bridge between labelled xarray and tensors.

* ``field``, ``geometry``, ``transforms``, ``time_features``: the vocabulary every part of
  the layer shares (what an adapter returns, and the invertible maps stored with a store);
* ``sources``: adapters and simulators that return a Field;
* ``stores``: a Field written to ``train.zarr`` and read back, and the latent store;
* ``loading``: stores to tensors (samplers, patches, the DataModule).
"""
