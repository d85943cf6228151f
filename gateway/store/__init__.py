"""Storage: the only code that writes SQL."""

from .db import Store, describe, is_postgres, make_store

__all__ = ["Store", "describe", "is_postgres", "make_store"]
