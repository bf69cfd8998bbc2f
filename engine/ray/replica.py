"""One engine replica: a LlamaEngine inside a Ray Serve replica, its calls made from RayEngine (engine.py).

A request's adapter set is its multiplex key: Serve sends it to a replica that already holds that set
(reported through `@serve.multiplexed`), else to one holding fewest. Adapters a request names are loaded
from the cluster's catalogue on first use (the same source every replica loads), else from the adapter
directories; a first-use load is recorded in the catalogue so the other replicas load the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from ray import serve

from engine.config import EngineConfig
from engine.errors import EngineError, InvalidRequest
from engine.info import AdapterInfo, AdapterListing, EngineStats, LoadedAdapter, ModelInfo
from engine.interface import GenerationStream
from engine.ray.catalogue import catalogue_of
from engine.ray.wire import Entered, Event, Failed, Finished, ReplicaGone, Status
from engine.request import GenerateRequest

logger = logging.getLogger(__name__)

# While a request has no text yet, how often its replica looks for a status change to send.
STATUS_POLL_S = 0.05
# Adapter sets a replica reports as held, for routing (the engine's residency budget decides memory).
HELD_SETS = 64


class AdapterSet:
    """What Serve's multiplexing holds per key: nothing to free (the engine's residency budget does that)."""

    def __init__(self, key: str) -> None:
        self.key = key


class EngineReplica:
    async def __init__(self, config: EngineConfig, app_name: str) -> None:
        from engine.llama import LlamaEngine  # llama.cpp is loaded in the replica, never in the front end

        self._catalogue = catalogue_of(app_name)
        self._engine = LlamaEngine(config, adapter_locator=self._locate)
        await self._engine.__aenter__()
        self._id = serve.get_replica_context().replica_id.unique_id
        self._streams: dict[str, GenerationStream] = {}
        self._verified: dict[str, str] = {}  # adapter name -> the catalogue's hash this replica checked

    async def __del__(self) -> None:
        """Serve's graceful shutdown: it has let the open requests finish (graceful_shutdown_timeout_s)."""
        await self._engine.__aexit__(None, None, None)

    # -- generation -----------------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest, stream_id: str) -> AsyncIterator[list[Event]]:
        """Entered or Failed, then status changes, text deltas, and Finished or Failed; sent in lists, the
        deltas that piled up while the last list crossed in one (fewer Ray objects under load). Cancelling
        the caller's response cancels this generator, which aborts the request at its next decode step."""
        stream = self._engine.generate(request)
        pump: asyncio.Task[None] | None = None
        try:
            if key := serve.get_multiplexed_model_id():
                await self._adapter_set(key)
            await self._ensure([ref.name for ref in request.adapters])
            async with stream:
                self._streams[stream_id] = stream
                yield [Entered(self._id, stream.status())]
                await self._verify([ref.name for ref in request.adapters])
                queue: asyncio.Queue[Event | None] = asyncio.Queue()
                pump = asyncio.create_task(self._pump(stream, queue))
                status = stream.status()
                ended = False
                while not ended:
                    wait = None if status.phase == "generating" else STATUS_POLL_S
                    try:
                        first = await asyncio.wait_for(queue.get(), wait)
                    except TimeoutError:
                        if (now := stream.status()) != status:
                            status = now
                            yield [Status(now)]
                        continue
                    events: list[Event] = []
                    for event in (first, *_drained(queue)):
                        if event is None:
                            ended = True
                            break
                        events.append(event)
                    status = stream.status()
                    if events:
                        yield events
            assert stream.result is not None
            yield [Finished(stream.result, self._engine.stats())]
        except EngineError as exc:
            yield [Failed(exc)]
        finally:
            self._streams.pop(stream_id, None)
            if pump is not None:
                pump.cancel()

    @staticmethod
    async def _pump(stream: GenerationStream, queue: asyncio.Queue[Event | None]) -> None:
        """The engine's deltas into the queue the generator reads with a timeout (status between them)."""
        try:
            async for delta in stream:
                queue.put_nowait(delta)
        except EngineError as exc:
            queue.put_nowait(Failed(exc))
        queue.put_nowait(None)

    async def abort(self, stream_id: str, for_replica: str) -> None:
        if (stream := self._streams.get(stream_id)) is not None:
            stream.abort()

    def _aimed_here(self, for_replica: str | None) -> None:
        """A call aimed at another replica reached this one: that replica is gone (routing.py)."""
        if for_replica is not None and for_replica != self._id:
            raise ReplicaGone(f"engine replica {for_replica} is not running")

    # -- adapters -------------------------------------------------------------------------------------------

    @serve.multiplexed(max_num_models_per_replica=HELD_SETS)
    async def _adapter_set(self, key: str) -> AdapterSet:
        """Marks the set as held here, which Serve's router reads (the loads happen in _ensure)."""
        return AdapterSet(key)

    async def _ensure(self, names: list[str]) -> None:
        """Load what the catalogue has under the names a request uses and this replica lacks (a name
        loaded on another replica, or evicted here); names it lacks are the engine's first-use loads."""
        for name in names:
            if name in self._engine.resident_adapters():
                continue
            entry: AdapterInfo | None = await self._catalogue.get.remote(name)
            if entry is not None:
                await self._engine.load_adapter(name, entry.path, pin=entry.pinned)

    async def _locate(self, name: str) -> str | None:
        """The catalogue's source for `name`, else the adapter directories' NAME.gguf or NAME/."""
        entry: AdapterInfo | None = await self._catalogue.get.remote(name)
        return entry.path if entry is not None else await self._engine.find_adapter(name)

    async def _verify(self, names: list[str]) -> None:
        """A name means the same bytes on every replica: the first replica to load it records its hash in
        the catalogue; one that loaded other bytes under that name (the file changed) refuses it."""
        unchecked = [n for n in names if n not in self._verified]
        if not unchecked:
            return
        resident = {a.name: a for a in (await self._engine.list_adapters()).adapters}
        for name in unchecked:
            if (mine := resident.get(name)) is None:
                continue
            entry: AdapterInfo = await self._catalogue.put_if_absent.remote(mine)
            if entry.sha256 != mine.sha256:
                with contextlib.suppress(EngineError):
                    await self._engine.unload_adapter(name)
                raise InvalidRequest(
                    f"adapter {name!r} changed on disk since it was loaded: this replica read other bytes "
                    f"({mine.sha256[:12]}) than the catalogue's ({entry.sha256[:12]}); load_adapter it again"
                )
            self._verified[name] = entry.sha256

    async def load_adapter(
        self, name: str, path: str, pin: bool, expect_sha256: str | None, for_replica: str | None = None
    ) -> LoadedAdapter:
        self._aimed_here(for_replica)
        loaded = await self._engine.load_adapter(name, path, pin=pin, expect_sha256=expect_sha256)
        self._verified[name] = loaded.adapter.sha256
        await self._adapter_set(name)  # Serve then sends the requests using it alone here first
        return loaded

    async def sync_adapter(self, name: str, for_replica: str) -> AdapterInfo | None:
        """Follow the catalogue's entry for `name`: load its bytes if this replica holds others, unload it
        if the catalogue has none (returns what was unloaded)."""
        self._aimed_here(for_replica)
        self._verified.pop(name, None)
        entry: AdapterInfo | None = await self._catalogue.get.remote(name)
        resident = {a.name: a for a in (await self._engine.list_adapters()).adapters}
        mine = resident.get(name)
        if entry is None:
            return await self._engine.unload_adapter(name) if mine is not None else None
        if mine is not None and mine.sha256 != entry.sha256:
            await self._engine.load_adapter(name, entry.path, pin=entry.pinned)
        self._verified[name] = entry.sha256
        return None

    async def unload_adapter(self, name: str, for_replica: str) -> AdapterInfo | None:
        """Unload `name` here (AdapterInUse while requests use it); None if this replica does not hold it."""
        self._aimed_here(for_replica)
        self._verified.pop(name, None)
        if name not in self._engine.resident_adapters():  # no core call, no adapter-directory walk
            return None
        return await self._engine.unload_adapter(name)

    async def list_adapters(self, for_replica: str) -> AdapterListing:
        self._aimed_here(for_replica)
        return await self._engine.list_adapters()

    # -- state ----------------------------------------------------------------------------------------------

    async def describe(self, for_replica: str | None = None) -> tuple[str, ModelInfo | None]:
        self._aimed_here(for_replica)
        return self._id, self._engine.model_info

    async def stats(self, for_replica: str) -> EngineStats:
        self._aimed_here(for_replica)
        return self._engine.stats()

    async def drain(self, grace_s: float, for_replica: str) -> int:
        self._aimed_here(for_replica)
        return await self._engine.drain(grace_s)


def check_key(names: list[str]) -> str:
    """The multiplex key of an adapter set: its names, sorted, joined by '+' ('' for the base model)."""
    if any("+" in n for n in names):
        raise InvalidRequest("adapter names may not contain '+'")
    return "+".join(sorted(set(names)))


def _drained(queue: asyncio.Queue[Event | None]) -> list[Event | None]:
    """What the queue holds now, without waiting."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items
