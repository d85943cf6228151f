"""Storage: the only code that writes SQL."""

from .db import Store

__all__ = ["Store"]
