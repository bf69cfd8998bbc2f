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
import itertools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from ray import serve
from ray.exceptions import RayActorError, RayTaskError

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
)
from engine.ray.catalogue import catalogue_of
from engine.ray.cluster import (
    ReplicaView,
    engine_deployment,
    replica_config,
    running_replicas,
    start_ray,
    stop_application,
)
from engine.ray.options import RayOptions
from engine.ray.stream import RayStream
from engine.ray.wire import ReplicaGone
from engine.request import GenerateRequest

logger = logging.getLogger(__name__)

STATS_EVERY_S = 0.5
# How often the list of running replicas is read from Serve's controller (a larger call than stats).
REPLICAS_EVERY_S = 2.0
# An attached front end (the ingress) waits this long for the replicas to load the model.
REPLICA_START_TIMEOUT_S = 600.0
# A call aimed at one replica that has not answered in this long: the replica is gone (or hung).
REPLICA_CALL_TIMEOUT_S = 30.0
R = TypeVar("R")


class RayEngine:
    """`handle` None: deploy the engine replicas on opening (joining or starting Ray) and delete them on
    exit. A handle (the ingress deployment's, ingress.py): use replicas deployed beside it."""

    def __init__(self, config: EngineConfig, options: RayOptions, handle: Any = None) -> None:
        self.config = replica_config(config, options)
        self.options = options
        self._handle = handle
        self._owner = handle is None
        self._state = EngineState.STOPPED
        self._started = anyio.Event()
        self._model_info: ModelInfo | None = None
        self._catalogue: Any = None
        self._replicas: list[ReplicaView] = []
        self._replica_stats: dict[str, EngineStats] = {}
        self._in_flight = 0
        self._started_ray = False
        self._refresher: asyncio.Task[None] | None = None

    # -- lifetime -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._state = EngineState.STARTING
        try:
            if self._owner:
                await anyio.to_thread.run_sync(self._deploy)
            self._catalogue = catalogue_of(self.options.app_name)
            with anyio.fail_after(REPLICA_START_TIMEOUT_S):
                while not (replicas := await self._replica_ids()):  # noqa: ASYNC110 (polling Serve)
                    await anyio.sleep(0.2)  # attached: the replicas are still loading the model
            _, info = await self._aimed(self._handle.describe, replicas[0])
            assert info is not None
            self._model_info = info.model_copy(
                update={
                    "max_running_requests": info.max_running_requests * self.options.replicas,
                    "backend": f"{info.backend}, {self.options.replicas} Ray Serve replicas",
                }
            )
            await self._refresh()
        except BaseException:
            self._state = EngineState.FAILED
            self._started.set()
            if self._owner:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._undeploy)
            raise
        self._refresher = asyncio.create_task(self._keep_refreshing())
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
        if self._owner:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._undeploy)
        if self._state is not EngineState.FAILED:
            self._state = EngineState.STOPPED

    def _deploy(self) -> None:
        """Join or start Ray, start Serve without its HTTP proxy (the front end is this process), and run
        the replicas; returns once every replica has loaded the model."""
        self._started_ray = start_ray(self.options)
        serve.start(proxy_location="Disabled")
        self._handle = serve.run(
            engine_deployment(self.config, self.options), name=self.options.app_name, route_prefix=None
        )

    def _undeploy(self) -> None:
        stop_application(self.options.app_name, self._catalogue, self._started_ray)

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
        first = await self._emptiest_replica()
        loaded: LoadedAdapter = await self._aimed(self._handle.load_adapter, first, name, path, pin, expect_sha256)
        self._note_stats(first, await self._aimed(self._handle.stats, first))  # where the next load goes
        await self._catalogue.put.remote(loaded.adapter)
        await self._each_replica(lambda r: self._aimed(self._handle.sync_adapter, r, name), skip=first)
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
        ready, wanted = self.replicas()
        return dataclasses.replace(summed(self._replica_stats), replicas_ready=ready, replicas_wanted=wanted)

    def _note_stats(self, replica: str, stats: EngineStats) -> None:
        """Keep the newer of two reports (a background refresh may answer after a finished request's)."""
        seen = self._replica_stats.get(replica)
        if seen is None or _progress(stats) >= _progress(seen):
            self._replica_stats[replica] = stats

    def replicas(self) -> tuple[int, int]:
        """(replicas running, replicas wanted), as of the last refresh."""
        return sum(r.state == "RUNNING" for r in self._replicas), self.options.replicas

    async def _keep_refreshing(self) -> None:
        every = round(REPLICAS_EVERY_S / STATS_EVERY_S)
        for tick in itertools.count(1):
            await anyio.sleep(STATS_EVERY_S)
            try:
                await self._refresh(replicas=tick % every == 0)
            except Exception as exc:  # a replica restarting: its numbers come back with it
                logger.debug("stats refresh failed: %s", exc)

    async def _refresh(self, replicas: bool = True) -> None:
        """The replicas' counters, and (`replicas`) which replicas run, from Serve's controller."""
        got = await self._each_replica(lambda r: self._aimed(self._handle.stats, r, wait_s=5), fresh=replicas)
        self._replica_stats = {r: s for r, s in self._replica_stats.items() if r in got}
        for replica, stats in got.items():
            self._note_stats(replica, stats)

    # -- calls to replicas ------------------------------------------------------------------------------------

    async def _replica_ids(self) -> list[str]:
        """The running replicas, as Serve's controller says now."""
        replicas = await running_replicas(self.options.app_name)
        if [(r.id, r.state) for r in replicas] != [(r.id, r.state) for r in self._replicas]:
            logger.info("engine replicas: %s", ", ".join(f"{r.id} {r.state.lower()}" for r in replicas) or "none")
        self._replicas = replicas
        return [r.id for r in replicas if r.state == "RUNNING"]

    async def _emptiest_replica(self) -> str:
        """The running replica holding fewest adapters: loads spread, and so does the traffic that follows
        them (Serve routes a set to the replica that loaded it)."""
        if not (replicas := await self._replica_ids()):
            raise EngineBusy("no engine replica is running (one is being restarted); retry in a few seconds")
        held = {r: s.adapters_loaded for r, s in self._replica_stats.items()}
        return min(replicas, key=lambda r: held.get(r, 0))

    async def _aimed(self, method: Any, replica: str, *args: Any, wait_s: float = REPLICA_CALL_TIMEOUT_S) -> Any:
        """`method` on one replica, its EngineError raised as itself (not wrapped in Ray's traceback); a
        replica that is gone or does not answer in time raises ReplicaGone."""
        response = method.remote(*args, for_replica=replica)
        try:
            with anyio.fail_after(wait_s):
                return await response
        except TimeoutError:
            response.cancel()
            raise ReplicaGone(f"engine replica {replica} did not answer in {wait_s:g} s") from None
        except RayTaskError as exc:
            if isinstance(exc.cause, EngineError):
                raise exc.cause from None
            raise
        except RayActorError:
            raise ReplicaGone(f"engine replica {replica} stopped") from None

    async def _each_replica(
        self, call: Callable[[str], Awaitable[R]], skip: str | None = None, fresh: bool = True
    ) -> dict[str, R]:
        """`call` on every running replica at once (as the controller says now, or, not `fresh`, as it said
        last); those found gone meanwhile are left out."""
        known = await self._replica_ids() if fresh else [r.id for r in self._replicas if r.state == "RUNNING"]
        replicas = [r for r in known if r != skip]
        results = await asyncio.gather(*(call(r) for r in replicas), return_exceptions=True)
        answered: dict[str, R] = {}
        for replica, result in zip(replicas, results, strict=True):
            if isinstance(result, ReplicaGone):
                logger.warning("left out of a call to every replica: %s", result)
                continue
            if isinstance(result, BaseException):
                raise result
            answered[replica] = result
        return answered


def _progress(stats: EngineStats) -> tuple[int, int]:
    return stats.steps, stats.requests_finished + stats.requests_cancelled + stats.requests_failed


def summed(per_replica: dict[str, EngineStats]) -> EngineStats:
    """Counters and gauges added up (backend metrics too, by name), adapter lists joined, each replica's
    own stats kept under by_replica."""
    if not per_replica:
        return EngineStats(replicas_ready=0)
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
        elif field.name in ("running_adapters", "waiting_adapters"):
            total[field.name] = tuple(sorted({name for names in values for name in names}))
        elif field.name == "max_adapters":
            total[field.name] = values[0]  # the same configuration on every replica
        elif field.name == "by_replica":
            total[field.name] = dict(per_replica)
        else:
            total[field.name] = sum(values)
    return EngineStats(**total)
