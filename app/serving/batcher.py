"""Dynamic batching: concurrent requests for one model share one forward pass.

One `Batcher` per loaded model, on the event loop. `submit(x)` queues a request's inputs
[n, C, H, W] and waits for its own logits. A loop task takes the first waiting request
and every one queued behind it, up to `max_batch` inputs, runs them as one batch in a
thread (off the event loop), and answers each request with its rows.

Waiting for mates: a lone caller never waits. Only while the model is busy (the last
batch had mates, or requests queued during it) does the loop wait up to `max_wait_s`
for the batch to fill, which is when waiting pays. Requests that arrive while a pass
runs queue up and form the next batch on their own.

Small models run on the event loop: a thread hand-off (submit, wake the pool thread,
wake the loop again) cost more than the whole forward pass of a small student, on every
batch. When the passes measured so far put this batch under `inline_max_s`, it runs
inline; anything slower (a large model, a large batch) still goes to the thread pool, so
the loop is never held for long.

A failing batch is retried one request at a time, so that a request that breaks the
forward pass fails alone and never takes its batch-mates with it. Inputs are checked
before they get here (app.serving.inputs), so this is the last line, not the first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The batcher was closed (its model evicted); submit to a fresh one."""


@dataclass
class _Request:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]


_CLOSE = object()


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int,
        max_wait_s: float,
        executor: Executor | None = None,
        name: str = "model",
        on_batch: Callable[[int, float], None] | None = None,
        inline_max_s: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_s)
        self._executor = executor
        self.name = name
        self._on_batch = on_batch
        self.inline_max_s = max(0.0, inline_max_s)
        # Seconds per input row of the passes so far (moving average); None before any.
        self._row_seconds: float | None = None
        # Waiting requests (and _CLOSE), and the future the loop task sleeps on while
        # none wait: a plain deque and one future, because asyncio.Queue with wait_for
        # made a task and a timer for every request gathered into a batch.
        self._pending: deque[_Request | object] = deque()
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False
        # Figures for tests and logs: forward passes and the inputs they carried.
        self.batches = 0
        self.rows = 0
        self.inline_batches = 0

    @property
    def closed(self) -> bool:
        return self._closed

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Logits for `x` ([n, ...] float32, n >= 1), computed in some batch."""
        if self._closed:
            raise BatcherClosedError(self.name)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher-{self.name}"
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._put(_Request(x, future))
        return await future

    async def close(self) -> None:
        """Stop taking requests; those already queued are still answered."""
        if self._closed:
            return
        self._closed = True
        if self._task is None:
            return
        self._put(_CLOSE)
        await asyncio.shield(self._task)

    def close_soon(self) -> None:
        """`close` from outside the loop's coroutines (e.g. an eviction callback)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._put(_CLOSE)

    def _put(self, item: _Request | object) -> None:
        self._pending.append(item)
        _release(self._wake)

    async def _wait(self, deadline: float | None) -> bool:
        """Until something waits (True) or the loop time `deadline` passes (False)."""
        if self._pending:
            return True
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            return False
        wake = self._wake = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, _release, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()
        return bool(self._pending)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Request | None = None
        closing = False
        while True:
            if carry is not None:
                first: _Request | object = carry
                carry = None
            elif closing:
                return
            else:
                await self._wait(None)
                first = self._pending.popleft()
            if first is _CLOSE:
                closing = True
                continue
            assert isinstance(first, _Request)
            batch = [first]
            rows = len(first.x)
            deadline = loop.time() + (self.max_wait_s if self._busy else 0.0)
            while rows < self.max_batch and not closing:
                if not await self._wait(deadline):
                    break
                item = self._pending.popleft()
                if item is _CLOSE:
                    closing = True
                    break
                assert isinstance(item, _Request)
                if rows + len(item.x) > self.max_batch:
                    carry = item
                    break
                batch.append(item)
                rows += len(item.x)
            # Callers that went away (client disconnects) need no answer.
            batch = [r for r in batch if not r.future.done()]
            if batch:
                await self._forward(batch, loop)
            self._busy = len(batch) > 1 or bool(self._pending) or carry is not None

    async def _forward(self, batch: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        try:
            outputs = await self._call([r.x for r in batch], loop)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            log.warning(
                "%s: a batch of %d failed (%s); retrying one by one", self.name, len(batch), exc
            )
            for request in batch:
                try:
                    (out,) = await self._call([request.x], loop)
                except Exception as single_exc:
                    _settle(request.future, exc=single_exc)
                else:
                    _settle(request.future, out)
            return
        for request, out in zip(batch, outputs, strict=True):
            _settle(request.future, out)

    async def _call(
        self, xs: list[np.ndarray], loop: asyncio.AbstractEventLoop
    ) -> list[np.ndarray]:
        """`_run_batch`, inline when it is known to be quick (see the module doc)."""
        rows = sum(len(x) for x in xs)
        known = self._row_seconds
        if self.inline_max_s > 0 and known is not None and known * rows <= self.inline_max_s:
            self.inline_batches += 1
            return self._run_batch(xs)
        return await loop.run_in_executor(self._executor, self._run_batch, xs)

    def _run_batch(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        x = xs[0] if len(xs) == 1 else np.concatenate(xs, axis=0)
        start = time.perf_counter()
        out = self._run(x)
        seconds = time.perf_counter() - start
        if len(out) != len(x):
            raise RuntimeError(f"{self.name}: {len(out)} outputs for {len(x)} inputs")
        self.batches += 1
        self.rows += len(x)
        per_row = seconds / len(x)
        previous = self._row_seconds
        # The average follows the model's speed but one slow pass (a page fault, another
        # process on the core) does not push it past the inline bound for long.
        self._row_seconds = per_row if previous is None else 0.8 * previous + 0.2 * per_row
        if self._on_batch is not None:
            self._on_batch(len(x), seconds)
        if len(xs) == 1:
            return [out]
        splits = np.cumsum([len(part) for part in xs])[:-1]
        return np.split(out, splits, axis=0)


def _release(wake: asyncio.Future[None] | None) -> None:
    if wake is not None and not wake.done():
        wake.set_result(None)


def _settle(
    future: asyncio.Future[np.ndarray],
    result: np.ndarray | None = None,
    *,
    exc: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
