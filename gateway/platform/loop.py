"""The event loop: uvloop when it is installed (it is on Linux and macOS), asyncio's otherwise."""

from __future__ import annotations

import asyncio


def install_fast_loop() -> str:
    """Make new event loops uvloop ones if uvloop is importable; name the loop in use."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
