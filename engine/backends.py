"""Which backend serves an `InferenceEngine`: chosen by name, imported only when opened.

The front ends call `open_engine` and never import a backend, so a process that holds no model (a
router in front of remote replicas) need not load llama.cpp at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from engine.config import EngineConfig
from engine.interface import InferenceEngine
from engine.ray.options import RayOptions

Backend = Literal["llama", "ray"]
BACKENDS: tuple[Backend, ...] = ("llama", "ray")


def open_engine(config: EngineConfig, backend: Backend = "llama", ray: RayOptions | None = None) -> InferenceEngine:
    """An engine for `config`, not yet started: `async with open_engine(config) as engine: …`.

    "llama": in this process; "ray": `ray.replicas` llama engines on Ray Serve (this process loads Ray,
    not llama.cpp)."""
    if backend == "llama":
        from engine.llama import LlamaEngine  # loads llama.cpp

        return LlamaEngine(config)
    if backend == "ray":
        from engine.ray.engine import RayEngine  # loads Ray

        return RayEngine(config, ray or RayOptions())
    raise ValueError(f"unknown engine backend {backend!r}; known: {', '.join(BACKENDS)}")


def serve_http_on_ray(
    front_end: Callable[[InferenceEngine], Any],
    config: EngineConfig,
    options: RayOptions,
    *,
    host: str,
    port: int,
    grace_s: float,
) -> Any:
    """The front end (`front_end(engine) -> ASGI app`) and the engine replicas as one Ray Serve application,
    Serve's proxy on host:port; `.start()` deploys it, `.stop()` ends it (a ServeApplication)."""
    from engine.ray.serving import ServeApplication  # loads Ray

    return ServeApplication(front_end, config, options, host=host, port=port, grace_s=grace_s)
