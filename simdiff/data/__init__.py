"""Data layer: adapters, simulators, Geometry, normalisation, stores and loaders.

The one bridge between labelled xarray and tensors lives here.
"""
