"""The dynamic batcher: gathering, bounds, isolation of failures, draining on close."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.serving.batcher import Batcher, BatcherClosedError


class Recorder:
    """A forward pass that doubles its input, slowly, and records each batch's size."""

    def __init__(self, delay: float = 0.02, poison: float | None = None) -> None:
        self.delay = delay
        self.poison = poison
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.sizes.append(len(x))
        time.sleep(self.delay)
        if self.poison is not None and np.any(x == self.poison):
            raise ValueError("poisoned input")
        return x.reshape(len(x), -1) * 2


def one(value: float, rows: int = 1) -> np.ndarray:
    return np.full((rows, 1, 2, 2), value, dtype=np.float32)


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows():
    async def main() -> tuple[list[np.ndarray], Recorder]:
        run = Recorder()
        batcher = Batcher(run, max_batch=32, max_wait_s=0.005)
        outs = await asyncio.gather(*(batcher.submit(one(i)) for i in range(40)))
        await batcher.close()
        return outs, run

    outs, run = asyncio.run(main())
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, np.full((1, 4), 2.0 * i))
    assert sum(run.sizes) == 40
    assert len(run.sizes) < 40 / 4, run.sizes  # gathered, not one by one
    assert max(run.sizes) <= 32


def test_batches_never_exceed_the_bound_and_big_requests_stay_whole():
    async def main() -> tuple[list[np.ndarray], Recorder]:
        run = Recorder(delay=0.005)
        batcher = Batcher(run, max_batch=8, max_wait_s=0.005)
        sizes = [3, 5, 2, 7, 1, 12, 4]
        outs = await asyncio.gather(*(batcher.submit(one(i, rows=n)) for i, n in enumerate(sizes)))
        await batcher.close()
        return outs, run

    outs, run = asyncio.run(main())
    assert [len(o) for o in outs] == [3, 5, 2, 7, 1, 12, 4]
    # A request larger than the bound runs alone, whole; no batch mixes past the bound.
    assert all(s <= 8 or s == 12 for s in run.sizes), run.sizes
    assert sorted(run.sizes).count(12) == 1
    for i, out in enumerate(outs):
        assert np.all(out == 2.0 * i)


def test_a_bad_request_fails_alone_and_its_batch_mates_are_answered():
    async def main():
        run = Recorder(poison=-1.0)
        batcher = Batcher(run, max_batch=32, max_wait_s=0.01)
        values = [1.0, 2.0, -1.0, 3.0, 4.0]
        results = await asyncio.gather(
            *(batcher.submit(one(v)) for v in values), return_exceptions=True
        )
        await batcher.close()
        return values, results, run

    values, results, run = asyncio.run(main())
    for value, result in zip(values, results, strict=True):
        if value == -1.0:
            assert isinstance(result, ValueError)
        else:
            np.testing.assert_array_equal(result, np.full((1, 4), 2.0 * value))
    assert run.sizes[0] == 5  # they did share a batch first


def test_a_lone_caller_does_not_wait_for_mates():
    async def main() -> float:
        batcher = Batcher(Recorder(delay=0), max_batch=32, max_wait_s=2.0)
        await batcher.submit(one(1))  # warm: starts the loop task
        start = time.perf_counter()
        await batcher.submit(one(2))
        elapsed = time.perf_counter() - start
        await batcher.close()
        return elapsed

    # With a 2 s wait configured, a lone request must not sit out the wait.
    assert asyncio.run(main()) < 1.0


def test_the_forward_pass_runs_off_the_event_loop_thread():
    async def main() -> tuple[set[str], str]:
        run = Recorder(delay=0)
        batcher = Batcher(run, max_batch=4, max_wait_s=0.001)
        await batcher.submit(one(1))
        await batcher.close()
        return run.threads, threading.current_thread().name

    threads, loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads


def test_close_answers_what_was_queued_then_refuses_new_requests():
    async def main():
        run = Recorder(delay=0.01)
        batcher = Batcher(run, max_batch=2, max_wait_s=0.001)
        pending = [asyncio.ensure_future(batcher.submit(one(i))) for i in range(6)]
        await asyncio.sleep(0)  # let them queue
        await batcher.close()
        with pytest.raises(BatcherClosedError):
            await batcher.submit(one(9))
        return await asyncio.gather(*pending)

    outs = asyncio.run(main())
    assert [float(o[0, 0]) for o in outs] == [2.0 * i for i in range(6)]


def test_a_caller_that_went_away_is_skipped():
    async def main():
        run = Recorder(delay=0.05)
        batcher = Batcher(run, max_batch=1, max_wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(one(1)))
        gone = asyncio.ensure_future(batcher.submit(one(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        out = await first
        third = await batcher.submit(one(3))
        await batcher.close()
        return out, third, run

    out, third, run = asyncio.run(main())
    assert float(out[0, 0]) == 2.0 and float(third[0, 0]) == 6.0
    assert run.sizes == [1, 1]  # the cancelled request never ran


def test_bounds_must_make_sense():
    with pytest.raises(ValueError):
        Batcher(lambda x: x, max_batch=0, max_wait_s=0.001)


def test_quick_passes_run_inline_and_slow_ones_in_the_pool():
    async def main(delay: float, inline_max_s: float) -> tuple[Batcher, Recorder]:
        run = Recorder(delay=delay)
        batcher = Batcher(run, max_batch=4, max_wait_s=0.0, inline_max_s=inline_max_s)
        for i in range(5):
            out = await batcher.submit(one(float(i)))
            assert float(out[0, 0]) == 2.0 * i
        await batcher.close()
        return batcher, run

    loop_thread = threading.current_thread().name
    # The first pass is measured in the pool; a quick model then runs on the loop.
    batcher, run = asyncio.run(main(delay=0.0, inline_max_s=0.01))
    assert batcher.inline_batches == 4 and loop_thread in run.threads
    # A pass slower than the bound never holds the loop.
    batcher, run = asyncio.run(main(delay=0.005, inline_max_s=0.001))
    assert batcher.inline_batches == 0 and loop_thread not in run.threads
    # 0 turns it off.
    batcher, run = asyncio.run(main(delay=0.0, inline_max_s=0.0))
    assert batcher.inline_batches == 0


def test_an_inline_batch_that_fails_still_fails_alone():
    async def main() -> list[object]:
        batcher = Batcher(Recorder(delay=0.0, poison=-1.0), max_batch=8, inline_max_s=1.0,
                          max_wait_s=0.0)  # fmt: skip
        await batcher.submit(one(0.0))  # measured: later passes run inline
        results = await asyncio.gather(
            *(batcher.submit(one(v)) for v in (1.0, -1.0, 2.0)), return_exceptions=True
        )
        await batcher.close()
        assert batcher.inline_batches >= 1
        return results

    good, bad, other = asyncio.run(main())
    assert isinstance(bad, ValueError)
    assert float(good[0, 0]) == 2.0 and float(other[0, 0]) == 4.0


def test_a_gpu_model_server_never_runs_passes_on_the_event_loop():
    # No GPU here: the rule is read off the batcher a cuda server would make for a model.
    import torch

    from app.config import get_settings
    from app.serving.backends import LoadedModel
    from app.serving.server import ModelServer

    class Backend:
        name = "torch"
        size_bytes = 1

        def run(self, x: np.ndarray) -> np.ndarray:
            return x

    server = ModelServer(get_settings())
    model = LoadedModel("m", Backend(), ["a"], (1, 2, 2), 1.0, {})
    try:
        assert server._batcher(model).inline_max_s > 0  # the CPU default
        server.device = torch.device("cuda")
        server._batchers.clear()
        assert server._batcher(model).inline_max_s == 0
    finally:
        server.executor.shutdown(wait=False)
