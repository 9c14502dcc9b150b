"""The version, alone in a module that imports nothing (the compiler's cache key reads it)."""
__version__ = "0.1.0"
