"""RayEngine: the `InferenceEngine` of N engine replicas on Ray Serve, used by the front ends as any other.

Opening it joins a Ray cluster (`RayOptions.address`) or starts a local Ray instance, deploys the engine
replicas (replica.py) as a Serve application, and holds a handle to them. A request goes to the replica
Serve picks for its adapter set and streams back (wire.py); adapter commands go to the catalogue and to
every replica; stats are the replicas' summed, refreshed in the background and with every finished
request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.schema import LoggingConfig

from engine.config import EngineConfig
from engine.errors import (
    EngineBusy,
    EngineError,
    EngineFailure,
    EngineStopped,
    UnknownAdapter,
    bounded,
    listed,
)
from engine.info import (
    AdapterInfo,
    AdapterListing,
    BackendMetric,
    EngineState,
    EngineStats,
    LoadedAdapter,
    ModelInfo,
    RequestStatus,
)
from engine.ray.catalogue import CATALOGUE_ACTOR, AdapterCatalogue
from engine.ray.options import RayOptions
from engine.ray.replica import EngineReplica, check_key
from engine.ray.routing import ReplicaAwareRouter
from engine.ray.wire import Entered, Event, Failed, Finished, Status
from engine.request import GenerateRequest
from engine.result import GenerationResult, TextDelta

logger = logging.getLogger(__name__)

STATS_EVERY_S = 0.25
# How long leaving a stream early waits for the replica to confirm the abort.
LEAVE_WAIT_S = 2.0
# A call aimed at one replica that has not answered in this long: the replica is gone (or hung).
REPLICA_CALL_TIMEOUT_S = 30.0
NAMESPACE = "loramux"
R = TypeVar("R")


class RayEngine:
    def __init__(self, config: EngineConfig, options: RayOptions) -> None:
        # Each replica's llama.cpp threads are its CPUs, fixed: replicas on one machine never share cores.
        self.config = config.model_copy(update={"threads": options.replica_threads, "adaptive_threads": False})
        self.options = options
        self._state = EngineState.STOPPED
        self._started = anyio.Event()
        self._model_info: ModelInfo | None = None
        self._handle: Any = None
        self._catalogue: Any = None
        self._replica_stats: dict[str, EngineStats] = {}
        self._in_flight = 0
        self._started_ray = False
        self._refresher: asyncio.Task[None] | None = None

    # -- lifetime -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._state = EngineState.STARTING
        try:
            await anyio.to_thread.run_sync(self._deploy)
            replicas = await self._replica_ids()
            _, info = await self._aimed(self._handle.describe, replicas[0])
            assert info is not None
            self._model_info = info.model_copy(
                update={
                    "max_running_requests": info.max_running_requests * self.options.replicas,
                    "backend": f"{info.backend}, {self.options.replicas} Ray Serve replicas",
                }
            )
            await self._refresh_stats()
        except BaseException:
            self._state = EngineState.FAILED
            self._started.set()
            await anyio.to_thread.run_sync(self._undeploy)
            raise
        self._refresher = asyncio.create_task(self._keep_stats())
        self._state = EngineState.READY
        self._started.set()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._state in (EngineState.READY, EngineState.STARTING):
            self._state = EngineState.STOPPING
        if self._refresher is not None:
            self._refresher.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._undeploy)
        if self._state is not EngineState.FAILED:
            self._state = EngineState.STOPPED

    def _deploy(self) -> None:
        """Join or start Ray, start Serve without its HTTP proxy (the front end is this process), and run
        the replicas; returns once every replica has loaded the model."""
        if not ray.is_initialized():
            # loramux handles SIGTERM itself (drain, then stop); Ray's handler would print a stack dump first.
            os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
            cpus = None if self.options.address else self.options.replicas * self.options.replica_threads
            ray.init(
                address=self.options.address,
                num_cpus=cpus,
                namespace=NAMESPACE,
                include_dashboard=False,
                configure_logging=False,
            )
            self._started_ray = True
        serve.start(proxy_location="Disabled", logging_config=LoggingConfig(log_level="WARNING"))
        name = f"{CATALOGUE_ACTOR}-{self.options.app_name}"
        self._catalogue = AdapterCatalogue.options(name=name, namespace=NAMESPACE, get_if_exists=True).remote()
        deployment = serve.deployment(
            EngineReplica,
            name="engine",
            num_replicas=self.options.replicas,
            ray_actor_options={"num_cpus": self.options.replica_threads},
            # Serve's default of 5 would cap a continuously batching engine at 5 requests; beyond what the
            # engine takes, requests are refused by it (EngineBusy), not queued by Serve. +8: control calls.
            max_ongoing_requests=self.config.max_in_flight + 8,
            request_router_config=RequestRouterConfig(request_router_class=ReplicaAwareRouter),
            graceful_shutdown_timeout_s=5,
            # Serve logs every call at INFO; stats are polled 4 times a second per replica.
            logging_config=LoggingConfig(enable_access_log=False, log_level="WARNING"),
        )
        self._handle = serve.run(
            deployment.bind(self.config, self._catalogue), name=self.options.app_name, route_prefix=None
        )

    def _undeploy(self) -> None:
        if not ray.is_initialized():
            return
        try:
            serve.delete(self.options.app_name)
            if self._catalogue is not None:
                ray.kill(self._catalogue)
        finally:
            if self._started_ray:
                serve.shutdown()
                ray.shutdown()

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def model_info(self) -> ModelInfo | None:
        return self._model_info

    async def drain(self, grace_s: float) -> int:
        if self._state in (EngineState.READY, EngineState.STARTING):
            self._state = EngineState.STOPPING
        ended = await self._each_replica(lambda r: self._aimed(self._handle.drain, r, grace_s, wait_s=grace_s + 30))
        return sum(ended.values())

    async def _ready(self) -> None:
        if self._state is EngineState.STARTING:
            await self._started.wait()
        if self._state is not EngineState.READY:
            if self._state is EngineState.FAILED:
                raise EngineFailure("the engine replicas could not start; see the server log")
            raise EngineStopped("the server is shutting down and takes no new requests")

    # -- requests -----------------------------------------------------------------------------------------

    def generate(self, request: GenerateRequest) -> RayStream:
        return RayStream(self, request)

    # -- adapters -----------------------------------------------------------------------------------------

    async def load_adapter(
        self, name: str, path: str, *, pin: bool = False, expect_sha256: str | None = None
    ) -> LoadedAdapter:
        """Load on one replica (it validates the file and hashes it), record it in the catalogue, and have
        the replicas holding another version under that name load this one; the rest load it on first use."""
        await self._ready()
        replicas = await self._replica_ids()
        loaded: LoadedAdapter = await self._aimed(
            self._handle.load_adapter, replicas[0], name, path, pin, expect_sha256
        )
        await self._catalogue.put.remote(loaded.adapter)
        await self._each_replica(lambda r: self._aimed(self._handle.sync_adapter, r, name), skip=replicas[0])
        return loaded

    async def unload_adapter(self, name: str) -> AdapterInfo:
        await self._ready()
        entry: AdapterInfo | None = await self._catalogue.get.remote(name)
        unloaded = await self._each_replica(lambda r: self._aimed(self._handle.unload_adapter, r, name))
        held = [info for info in unloaded.values() if info is not None]
        if entry is None and not held:
            known = [a.name for a in (await self.list_adapters()).adapters]
            raise UnknownAdapter(f"no adapter named {bounded(name, 64)!r} is loaded; loaded adapters: {listed(known)}")
        await self._catalogue.remove.remote(name)
        info = held[0] if held else entry
        assert info is not None
        return info.model_copy(update={"requests_served": sum(i.requests_served for i in held)})

    async def list_adapters(self) -> AdapterListing:
        """The catalogue's adapters, each with its counts summed over the replicas holding it."""
        await self._ready()
        listings = await self._each_replica(lambda r: self._aimed(self._handle.list_adapters, r))
        held: dict[str, list[AdapterInfo]] = {}
        for listing in listings.values():
            for info in listing.adapters:
                held.setdefault(info.name, []).append(info)
        catalogue: list[AdapterInfo] = await self._catalogue.adapters.remote()
        names = sorted({a.name for a in catalogue} | set(held))
        entries = {a.name: a for a in catalogue}
        adapters = []
        for name in names:
            copies = held.get(name, [])
            base = entries.get(name) or copies[0]
            adapters.append(
                base.model_copy(
                    update={
                        "requests_served": sum(c.requests_served for c in copies),
                        "requests_in_flight": sum(c.requests_in_flight for c in copies),
                        "replicas": tuple(r for r, got in listings.items() if name in {a.name for a in got.adapters}),
                    }
                )
            )
        first = next(iter(listings.values()))
        assert self._model_info is not None
        return first.model_copy(update={"base_model": self._model_info, "adapters": adapters})

    # -- stats ----------------------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """The replicas' counters summed, as of their last report (at most STATS_EVERY_S old)."""
        return summed(self._replica_stats)

    def _note_stats(self, replica: str, stats: EngineStats) -> None:
        """Keep the newer of two reports (a background refresh may answer after a finished request's)."""
        seen = self._replica_stats.get(replica)
        if seen is None or _progress(stats) >= _progress(seen):
            self._replica_stats[replica] = stats

    async def _keep_stats(self) -> None:
        while True:
            await anyio.sleep(STATS_EVERY_S)
            try:
                await self._refresh_stats()
            except Exception as exc:  # a replica restarting: its numbers come back with it
                logger.debug("stats refresh failed: %s", exc)

    async def _refresh_stats(self) -> None:
        got = await self._each_replica(lambda r: self._aimed(self._handle.stats, r, wait_s=5))
        self._replica_stats = {r: s for r, s in self._replica_stats.items() if r in got}
        for replica, stats in got.items():
            self._note_stats(replica, stats)

    # -- calls to replicas ------------------------------------------------------------------------------------

    async def _replica_ids(self) -> list[str]:
        replicas: list[str] = await self._catalogue.replicas.remote()
        if not replicas:
            raise EngineStopped("no engine replica is running")
        return replicas

    async def _aimed(self, method: Any, replica: str, *args: Any, wait_s: float = REPLICA_CALL_TIMEOUT_S) -> Any:
        """`method` on one replica; a replica that does not answer in time has gone."""
        try:
            with anyio.fail_after(wait_s):
                return await method.remote(*args, for_replica=replica)
        except TimeoutError:
            await self._catalogue.leave.remote(replica)
            raise EngineFailure(f"engine replica {replica} did not answer in {wait_s:g} s") from None

    async def _each_replica(self, call: Callable[[str], Awaitable[R]], skip: str | None = None) -> dict[str, R]:
        replicas = [r for r in await self._replica_ids() if r != skip]
        results = await asyncio.gather(*(call(r) for r in replicas))
        return dict(zip(replicas, results, strict=True))


def _progress(stats: EngineStats) -> tuple[int, int]:
    return stats.steps, stats.requests_finished + stats.requests_cancelled + stats.requests_failed


def summed(per_replica: dict[str, EngineStats]) -> EngineStats:
    """Counters and gauges added up; backend metrics too, by name."""
    if not per_replica:
        return EngineStats()
    total: dict[str, Any] = {}
    for field in dataclasses.fields(EngineStats):
        values = [getattr(s, field.name) for s in per_replica.values()]
        if field.name == "sequences_per_step":
            total[field.name] = dict(sum((Counter(v) for v in values), Counter()))
        elif field.name == "backend":
            by_name: dict[str, BackendMetric] = {}
            for metrics in values:
                for m in metrics:
                    seen = by_name.get(m.name)
                    by_name[m.name] = m if seen is None else dataclasses.replace(seen, value=seen.value + m.value)
            total[field.name] = tuple(by_name.values())
        else:
            total[field.name] = sum(values)
    return EngineStats(**total)


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
        key = check_key([ref.name for ref in self.request.adapters])
        handle = engine._handle.options(stream=True, multiplexed_model_id=key)
        engine._in_flight += 1
        self._counted = True
        try:
            self._response = handle.generate.remote(self.request, self._id)
            self._reader = asyncio.create_task(self._read(aiter(self._response)))
            first = await self._events.get()
        except BaseException:
            await self._close()
            raise
        if isinstance(first, Failed):
            await self._close()
            raise first.error
        assert isinstance(first, Entered), first
        return self

    async def _read(self, events: AsyncIterator[Event]) -> None:
        """The replica's events into the queue, status changes straight into status()."""
        try:
            async for event in events:
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
            error = EngineFailure("the engine replica serving this request stopped (it is being restarted); retry it")
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
