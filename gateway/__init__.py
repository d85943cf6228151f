"""Internal SMS gateway in front of the Bulk SMS DSC provider."""

from .app import create_app
from .platform.settings import Settings

__all__ = ["Settings", "create_app"]
