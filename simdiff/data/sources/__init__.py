"""Sources: adapters that read files (climate NetCDF/GRIB/zarr, Gaussian cubes) and built-in
simulators, each returning a :class:`~simdiff.data.field.Field`. A new adapter goes here.
"""
