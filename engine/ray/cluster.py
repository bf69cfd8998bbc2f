"""Where the Ray backend's parts live on a Ray cluster: the engine deployment, the adapter catalogue
actor, and which engine replicas are running (as Serve's controller reports them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.config import RequestRouterConfig
from ray.serve.deployment import Application
from ray.serve.schema import LoggingConfig

from engine.config import EngineConfig
from engine.ray.catalogue import NAMESPACE
from engine.ray.options import RayOptions
from engine.ray.replica import EngineReplica
from engine.ray.routing import ReplicaAwareRouter

ENGINE_DEPLOYMENT = "engine"
# Requests beyond what the engines take are theirs to refuse (EngineBusy); +8 leaves room for the calls
# aimed at a replica (abort, stats) while its engine is full.
CONTROL_CALLS = 8
# Serve logs every call at INFO, and stats are polled several times a second per replica.
QUIET = LoggingConfig(enable_access_log=False, log_level="WARNING")


@dataclass(frozen=True)
class ReplicaView:
    id: str  # the replica's unique id (what calls aimed at it name)
    pid: int | None
    state: str  # Serve's: STARTING, RUNNING, STOPPING, …


def start_ray(options: RayOptions) -> bool:
    """Join `options.address`, or start a local Ray with one CPU per replica thread. False if this
    process was already connected (a caller's Ray, which is not ours to shut down)."""
    if ray.is_initialized():
        return False
    # loramux handles SIGTERM itself (drain, then stop); Ray's handler would print a stack dump first.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    cpus = None if options.address else options.replicas * options.replica_threads
    ray.init(
        address=options.address, num_cpus=cpus, namespace=NAMESPACE, include_dashboard=False, configure_logging=False
    )
    return True


def engine_deployment(config: EngineConfig, options: RayOptions, grace_s: float = 5.0) -> Application:
    """The engine replicas, bound: `options.replicas` LlamaEngines of `options.replica_threads` threads."""
    deployment = serve.deployment(
        EngineReplica,
        name=ENGINE_DEPLOYMENT,
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.replica_threads},
        max_ongoing_requests=config.max_in_flight + CONTROL_CALLS,
        request_router_config=RequestRouterConfig(request_router_class=ReplicaAwareRouter),
        graceful_shutdown_timeout_s=grace_s,
        logging_config=QUIET,
    )
    return deployment.bind(replica_config(config, options), options.app_name)


def replica_config(config: EngineConfig, options: RayOptions) -> EngineConfig:
    """Each replica's llama.cpp threads are its CPUs, fixed: replicas on one machine never share cores."""
    return config.model_copy(update={"threads": options.replica_threads, "adaptive_threads": False})


async def running_replicas(app_name: str) -> list[ReplicaView]:
    """The engine replicas Serve's controller knows, with their state (the source of truth for liveness:
    a replica that died is gone from it, its replacement appears as STARTING, then RUNNING)."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    details: dict[str, Any] = await controller.get_serve_instance_details.remote()
    app = details.get("applications", {}).get(app_name)
    if app is None:
        return []
    replicas = app["deployments"].get(ENGINE_DEPLOYMENT, {}).get("replicas", [])
    return [ReplicaView(r["replica_id"], r.get("pid"), str(getattr(r["state"], "value", r["state"]))) for r in replicas]


def stop_application(app_name: str, catalogue: Any, started_ray: bool) -> None:
    """Delete the Serve application (Serve's graceful shutdown: new requests refused, open ones given the
    deployments' grace period) and its catalogue; shut Serve and Ray down if this process started them."""
    if not ray.is_initialized():
        return
    try:
        serve.delete(app_name)
        if catalogue is not None:
            ray.kill(catalogue)
    finally:
        if started_ray:
            serve.shutdown()
            ray.shutdown()
