"""convc's version, in a module below every layer: libraries and cache entries record it, the CLI
prints it, and none of them has to import the ``convc`` package (the API) to read it."""
__version__ = "0.1.0"
