"""Graceful shutdown on SIGTERM / SIGINT, the same for stdio and HTTP.

First signal: the engine takes no new calls (they get a "shutting down" error, HTTP /health says 503),
running calls get up to the grace period to finish, the rest end with a "shutting down" error; then the
transport is told to finish (`close`), which waits for those answers to go out. A second signal cuts the
grace period short. Service managers, container stops and Ctrl-C all land here, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from engine import InferenceEngine

logger = logging.getLogger("loramux")

DEFAULT_GRACE_S = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def stop_on_signals(engine: InferenceEngine, grace_s: float, close: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGTERM or SIGINT, then drain `engine` for up to `grace_s` seconds and `close()`.

    Signals stay caught until this task is cancelled (when the server has stopped), so a second Ctrl-C
    cuts the grace short instead of raising KeyboardInterrupt in the middle of the shutdown."""
    with anyio.open_signal_receiver(*SIGNALS) as signals:
        first = await anext(signals)
        stats = engine.stats()
        logger.info(
            "%s: taking no new calls; %d running or queued get up to %g s to finish (signal again to stop now)",
            signal.Signals(first).name,
            stats.running + stats.waiting,
            grace_s,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cut_short_on_signal, signals, engine)
            await engine.drain(grace_s)
            await close()


async def _cut_short_on_signal(signals: AsyncIterator[int], engine: InferenceEngine) -> None:
    async for again in signals:
        logger.info("%s again: ending the running calls now", signal.Signals(again).name)
        await engine.drain(0)
