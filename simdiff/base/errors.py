"""The one exception type for bad input data.

Messages name the file, the variable, the value and the fix, so a user can act on them
without reading a traceback.
"""


class DataError(ValueError):
    """Bad input data or a store that does not match what was asked of it."""
