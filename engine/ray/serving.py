"""Run the HTTP front end and the engine replicas as one Serve application, Serve's proxy on the port:
what `loramux --http --replicas N` does (cli.py), start to stop."""

from __future__ import annotations

import logging

from ray import serve

from engine.config import EngineConfig
from engine.ray.catalogue import catalogue_of
from engine.ray.cluster import start_ray, stop_application
from engine.ray.ingress import FrontEnd, http_application
from engine.ray.options import RayOptions

logger = logging.getLogger(__name__)


class ServeApplication:
    def __init__(
        self, front_end: FrontEnd, config: EngineConfig, options: RayOptions, *, host: str, port: int, grace_s: float
    ) -> None:
        self._app = http_application(front_end, config, options, grace_s)
        self._options = options
        self._host, self._port = host, port
        self._started_ray = False
        self._catalogue = None

    def start(self) -> None:
        """Join or start Ray, start Serve's proxy on host:port (a cluster whose Serve already runs keeps
        its proxy's), deploy; returns once the replicas have loaded the model (raises if they cannot)."""
        self._started_ray = start_ray(self._options)
        serve.start(http_options={"host": self._host, "port": self._port})
        self._catalogue = catalogue_of(self._options.app_name)
        serve.run(self._app, name=self._options.app_name, route_prefix="/")

    def stop(self) -> None:
        """Serve's graceful shutdown: new requests are refused, open ones get the grace period to finish."""
        stop_application(self._options.app_name, self._catalogue, self._started_ray)
