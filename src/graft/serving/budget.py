"""A process-wide budget of decoded pixels, so concurrent uploads cannot add up their decodes.

An image's compressed size says nothing about its decoded size: a 140 KB PNG can hold 144 Mpx
(432 MB as RGB). Every request decodes its files one at a time; this budget makes all requests
together decode at most ``capacity`` pixels at once. An image larger than the whole budget (up
to Pillow's hard limit) waits until nothing else is decoding and then decodes alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PixelBudget:
    """Pixels being decoded at once, across requests, kept under ``capacity``.

    Args:
        capacity: Most pixels in flight (an image over it decodes alone).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._changed: asyncio.Condition | None = None

    def start(self) -> None:
        """Bind to the running event loop (a new condition each time, as the app may restart)."""
        self._changed = asyncio.Condition()
        self.in_use = 0

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Wait until ``pixels`` fit in the budget, and hold them for the ``async with`` block."""
        if self._changed is None:
            raise RuntimeError("PixelBudget.start() was not called (the app's lifespan starts it)")
        need = max(1, min(int(pixels), self.capacity))
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_use + need <= self.capacity)
            self.in_use += need
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= need
                self._changed.notify_all()
