"""Micro-batching: concurrent requests share one forward pass.

Requests put their decoded images on a queue; one task takes whatever has arrived (up to
``max_batch`` images, waiting at most ``max_wait`` seconds for more once the first is there),
runs the model once in a worker thread, and hands each request its rows. Under load this turns
many batch-of-one forwards into a few larger ones; when idle, a lone request waits ``max_wait``
at most.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image


class Batcher:
    """Collects images from concurrent callers and runs ``predict`` on them together.

    Args:
        predict: Images -> ``(n, classes)`` probabilities (runs in a worker thread).
        max_batch: Most images per forward pass.
        max_wait: Seconds to wait for more images once one request is queued.
    """

    def __init__(
        self,
        predict: Callable[[Sequence[Image.Image]], np.ndarray],
        max_batch: int = 16,
        max_wait: float = 0.005,
    ) -> None:
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait
        self.queue: asyncio.Queue[tuple[list[Image.Image], asyncio.Future]] | None = None
        self.batches = 0
        self.images = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batching task on the running event loop (a new queue each time, so the app
        can be started again on another loop, as test clients do)."""
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Cancel the batching task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __call__(self, images: list[Image.Image]) -> np.ndarray:
        """Probabilities for ``images`` (one request's), computed alongside other requests'."""
        if self.queue is None:
            raise RuntimeError("Batcher.start() was not called (the app's lifespan starts it)")
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            count = len(pending[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                pending.append(item)
                count += len(item[0])
            images = [im for batch, _ in pending for im in batch]
            try:
                probs = await loop.run_in_executor(None, self.predict, images)
            except Exception as e:  # hand the failure to every waiting request; keep serving
                for _, future in pending:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(images)
            row = 0
            for batch, future in pending:
                if not future.done():
                    future.set_result(probs[row : row + len(batch)])
                row += len(batch)
