"""carto's version: a module of its own that imports nothing, so that every layer can record it."""

__version__ = "0.1.0.dev0"
