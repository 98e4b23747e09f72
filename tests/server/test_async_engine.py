"""The engine loop thread: many concurrent requests, aborts, the queue limit, draining, a dying engine."""

from __future__ import annotations

import asyncio

import pytest
from server_fakes import FakeEngine

from nanoflow_compiler.runtime.sampling import SamplingParams
from nanoflow_compiler.server.async_engine import AsyncEngine, EngineUnavailable, QueueFull


def _params(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n)


async def _text(stream) -> tuple[str, str | None]:
    text, reason = "", None
    async for d in stream:
        text += d.new_text
        reason = d.finish_reason
    return text, reason


def test_concurrent_requests_each_get_their_own_tokens():
    async def main():
        engine = AsyncEngine(FakeEngine())
        engine.start()
        prompts = [[5] * (i + 1) for i in range(20)]
        streams = await asyncio.gather(*(engine.submit([p], [_params(3 + i % 4)], f"r{i}") for i, p in
                                         enumerate(prompts)))
        results = await asyncio.gather(*(_text(s) for s in streams))
        await engine.shutdown(1.0)
        return results

    results = asyncio.run(main())
    for i, (text, reason) in enumerate(results):
        assert text == FakeEngine.expected(i + 1, 3 + i % 4)
        assert reason == "length"


def test_abort_frees_the_request_and_its_blocks():
    async def main():
        fake = FakeEngine(step_delay_s=0.01)
        engine = AsyncEngine(fake)
        engine.start()
        stream = await engine.submit([[7] * 9], [_params(10_000)], "long")
        async for d in stream:
            if d.num_generated >= 3:
                break
        assert engine.stats()["num_free_blocks"] < fake.num_blocks
        stream.abort()
        for _ in range(200):
            if not engine.num_active and engine.stats()["num_free_blocks"] == fake.num_blocks:
                break
            await asyncio.sleep(0.01)
        await engine.shutdown(1.0)
        return fake

    fake = asyncio.run(main())
    assert fake.aborted == ["long-0"]
    assert not fake.requests


def test_queue_limit_counts_requests_without_a_first_token():
    async def main():
        engine = AsyncEngine(FakeEngine(), max_queued=2)  # not started: nothing ever gets its first token
        waiting = [asyncio.create_task(engine.submit([[5]], [_params(2)], f"r{i}")) for i in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="limit 2"):
            await engine.submit([[5]], [_params(2)], "third")
        assert engine.stats()["queue_depth"] == 2
        engine.start()  # the waiting two are admitted, run, and free their places
        for s in await asyncio.gather(*waiting):
            await _text(s)
        assert engine.stats()["queue_depth"] == 0
        await _text(await engine.submit([[5]], [_params(2)], "later"))
        await engine.shutdown(1.0)

    asyncio.run(main())


def test_engine_rejection_reaches_the_caller_and_releases_the_queue_slot():
    async def main():
        engine = AsyncEngine(FakeEngine(max_model_len=8), max_queued=1)
        engine.start()
        with pytest.raises(ValueError, match="exceeds max_model_len"):
            await engine.submit([[5] * 20], [_params(2)], "too-long")
        text, _ = await _text(await engine.submit([[5]], [_params(2)], "ok"))  # the slot came back
        await engine.shutdown(1.0)
        return text

    assert asyncio.run(main()) == FakeEngine.expected(1, 2)


def test_drain_refuses_new_requests_and_ends_running_ones_with_abort():
    async def main():
        engine = AsyncEngine(FakeEngine(step_delay_s=0.01))
        engine.start()
        stream = await engine.submit([[5]], [_params(10_000)], "long")
        engine.begin_drain(0.2)
        assert engine.status == "draining"
        with pytest.raises(EngineUnavailable, match="draining"):
            await engine.submit([[5]], [_params(2)], "late")
        text, reason = await asyncio.wait_for(_text(stream), timeout=10)
        await engine.shutdown(0.2)
        return text, reason, engine.status

    text, reason, status = asyncio.run(main())
    assert reason == "abort" and 0 < len(text) < 10_000
    assert status == "dead: stopped"


def test_a_crashing_engine_fails_open_requests_instead_of_hanging_them():
    class Broken(FakeEngine):
        def step(self):
            raise RuntimeError("device lost")

    async def main():
        engine = AsyncEngine(Broken())
        engine.start()
        stream = await engine.submit([[5]], [_params(4)], "r")
        with pytest.raises(EngineUnavailable, match="device lost"):
            await asyncio.wait_for(_text(stream), timeout=10)
        with pytest.raises(EngineUnavailable):
            await engine.submit([[5]], [_params(4)], "after")
        return engine.status

    assert asyncio.run(main()).startswith("dead: RuntimeError: device lost")
