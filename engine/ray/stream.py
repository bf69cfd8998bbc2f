"""One request on an engine replica, as the caller sees it: `GenerationStream` over the replica's event
lists (wire.py), with status kept current by a reader task, aborts aimed at the serving replica, and a
retry on another replica when the one Serve picked died before taking the request."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from engine.errors import EngineBusy, EngineError, EngineFailure
from engine.info import RequestStatus
from engine.ray.replica import check_key
from engine.ray.wire import Entered, Event, Failed, Finished, ReplicaGone, Status
from engine.request import GenerateRequest
from engine.result import GenerationResult, TextDelta

if TYPE_CHECKING:
    from engine.ray.engine import RayEngine

logger = logging.getLogger(__name__)

# Tries to start a request when the replica Serve picks turns out dead (before it produced anything).
ENTER_ATTEMPTS = 3
# How long leaving a stream early waits for the replica to confirm the abort.
LEAVE_WAIT_S = 2.0


class RayStream:
    """One request on a replica: `GenerationStream` over the replica's event stream (wire.py). A reader
    task takes the events as they come, so status() is current whether or not the caller iterates."""

    def __init__(self, engine: RayEngine, request: GenerateRequest) -> None:
        self.request = request
        self.result: GenerationResult | None = None
        self._engine = engine
        self._id = uuid.uuid4().hex
        self._status = RequestStatus("preparing")
        self._replica: str | None = None
        self._response: Any = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._done = False
        self._closed = False
        self._counted = False

    def status(self) -> RequestStatus:
        return self._status

    async def __aenter__(self) -> Self:
        engine = self._engine
        await engine._ready()
        limit = engine.config.max_in_flight * engine.options.replicas
        if engine._in_flight >= limit:
            raise EngineBusy(
                f"the server is busy: {engine._in_flight} requests are running or queued, the limit is {limit}; "
                "retry in a few seconds"
            )
        key = check_key([ref.name for ref in self.request.adapters]) if engine.options.adapter_affinity else ""
        handle = engine._handle.options(stream=True, multiplexed_model_id=key)
        engine._in_flight += 1
        self._counted = True
        try:
            for attempt in range(1, ENTER_ATTEMPTS + 1):
                self._response = handle.generate.remote(self.request, self._id)
                self._reader = asyncio.create_task(self._read(aiter(self._response)))
                first = await self._events.get()
                lost = isinstance(first, Failed) and isinstance(first.error, ReplicaGone)
                if not lost or attempt == ENTER_ATTEMPTS:
                    break
                # the replica Serve picked died before taking the request (its router had not noticed yet):
                # nothing was generated, so another replica may take it
                await anyio.sleep(0.2 * attempt)
        except BaseException:
            await self._close()
            raise
        if isinstance(first, Failed):
            await self._close()
            raise first.error
        assert isinstance(first, Entered), first
        return self

    async def _read(self, batches: AsyncIterator[list[Event]]) -> None:
        """The replica's events into the queue, status changes straight into status()."""
        try:
            async for batch in batches:
                for event in batch:
                    if isinstance(event, Status | Entered):
                        self._status = event.status
                    if isinstance(event, Entered):
                        self._replica = event.replica
                    if not isinstance(event, Status):
                        self._events.put_nowait(event)
        except Exception as exc:  # the replica died (RayActorError) or Serve could not reach it
            if self._closed:
                return  # we cancelled it
            logger.warning("request on replica %s failed: %r", self._replica, exc)
            error = ReplicaGone("the engine replica serving this request stopped (it is being restarted); retry it")
            self._events.put_nowait(Failed(error))
        else:
            self._events.put_nowait(Failed(EngineFailure("the engine replica ended the stream without a result")))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Leaving early aborts the request on its replica and waits briefly for its end (so the counters
        that come with it are current); a replica that does not answer has its stream cancelled."""
        try:
            if not self._done:
                self.abort()
                with anyio.CancelScope(shield=True), anyio.move_on_after(LEAVE_WAIT_S):
                    async for _ in self:
                        pass
        except EngineError:
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        self._closed = True
        if self._response is not None and not self._done:
            self._response.cancel()  # the replica's generator is cancelled: the request is aborted there
        if self._reader is not None:
            self._reader.cancel()
        if self._counted:
            self._counted = False
            self._engine._in_flight -= 1

    def abort(self) -> None:
        """Aimed at the replica serving it, which ends the request; its result (cancelled) still comes."""
        if not self._done and self._replica is not None:
            self._engine._handle.abort.remote(self._id, for_replica=self._replica)

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[TextDelta]:
        while not self._done:
            event = await self._events.get()
            if isinstance(event, TextDelta):
                self._status = RequestStatus("generating")
                yield event
            elif isinstance(event, Finished):
                self._done = True
                self.result = event.result
                assert self._replica is not None
                self._engine._note_stats(self._replica, event.stats)
            elif isinstance(event, Failed):
                self._done = True
                raise event.error
