"""`loramux --http --replicas N`: the HTTP front end as a Serve ingress deployment beside the engine
replicas, so Serve's proxy takes the port and any number of ingress replicas can answer (MCP is served
statelessly for that). The front end is handed in as `front_end(engine) -> ASGI app` (mcp_server's
build_http_app with the server's options): this package never imports the front end.

    Serve proxy :port ──> HttpIngress (front_end over an attached RayEngine) ──handles──> EngineReplica × N
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from starlette.types import ASGIApp

from engine.config import EngineConfig
from engine.interface import InferenceEngine
from engine.ray.cluster import QUIET, engine_deployment
from engine.ray.engine import RayEngine
from engine.ray.options import RayOptions

FrontEnd = Callable[[InferenceEngine], ASGIApp]
# An MCP session's GET stream and every streamed answer is an ongoing request of the ingress.
INGRESS_MAX_ONGOING = 10_000


@serve.ingress()
class HttpIngress:
    def __init__(self, front_end: FrontEnd, config: EngineConfig, options: RayOptions, engines: Any) -> None:
        self._app = front_end(RayEngine(config, options, handle=engines))

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app  # its lifespan opens the RayEngine (attached to the replicas) and closes it


def http_application(front_end: FrontEnd, config: EngineConfig, options: RayOptions, grace_s: float) -> Application:
    """The ingress bound to the engine replicas (Serve passes it their handle)."""
    ingress = serve.deployment(
        HttpIngress,
        name="http",
        num_replicas=options.ingress_replicas,
        ray_actor_options={"num_cpus": 0},  # the engines own the CPUs; the front end's work is small
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        graceful_shutdown_timeout_s=grace_s,
        logging_config=QUIET,
    )
    return ingress.bind(front_end, config, options, engine_deployment(config, options, grace_s))
