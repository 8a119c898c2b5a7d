"""The sampling pool's backlog limit (sampler.max_backlog): a trial waits to start while more checkpoints than the
limit wait for evaluation. The pool runs as a plain object on an event loop, its sampler actors replaced by
handles whose evaluations finish when the test says."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from workers.sample import EvaluationError, SamplingPool


@dataclass
class Job:
    step: int


class Method:
    def __init__(self, fn):
        self.remote = fn


class HeldSampler:
    """A sampler actor's handle whose every evaluation stays running until the test ends it."""

    def __init__(self):
        self.running: list[asyncio.Future] = []
        self.ready = Method(self._ready)
        self.evaluate = Method(self._evaluate)

    async def _ready(self) -> dict:
        return {"node_id": "n", "gpu_ids": []}

    def _evaluate(self, job: Job) -> asyncio.Future:
        self.running.append(asyncio.get_running_loop().create_future())
        return self.running[-1]


def pool_with(sampler: HeldSampler, max_backlog: int) -> SamplingPool:
    pool = SamplingPool(0, {}, "hf", 1, max_backlog=max_backlog)
    pool.actors = [sampler]
    return pool


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_a_trial_waits_until_at_most_max_backlog_checkpoints_are_left():
    async def scenario():
        sampler = HeldSampler()
        pool = pool_with(sampler, max_backlog=2)
        for step in range(4):
            await pool.submit(Job(step))
        await settle()
        room = asyncio.create_task(pool.room())
        await settle()
        assert pool.backlog == 4 and not room.done()
        sampler.running[0].set_result("records 0")
        await settle()
        assert pool.backlog == 3 and not room.done()
        # a failed evaluation is done with too: it frees its place
        failure = RuntimeError("task failed")
        failure.cause = EvaluationError("step 1: grader crashed", "traceback")
        sampler.running[1].set_exception(failure)
        waited = await asyncio.wait_for(room, timeout=5)
        assert pool.backlog == 2 and waited > 0
        assert pool.finished == ["records 0"] and [line for _, line, _ in pool.failed] == ["step 1: grader crashed"]

    asyncio.run(scenario())


def test_without_a_limit_training_never_waits():
    async def scenario():
        sampler = HeldSampler()
        pool = pool_with(sampler, max_backlog=0)
        for step in range(10):
            await pool.submit(Job(step))
        await settle()
        assert pool.backlog == 10
        assert await asyncio.wait_for(pool.room(), timeout=1) < 0.5

    asyncio.run(scenario())
