"""How the Ray backend is laid out: replicas, the cluster to join, threads per replica."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RayOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int = Field(1, ge=1, le=256, description="Engine replicas, each an in-process llama backend.")
    address: str | None = Field(
        None, description="An existing Ray cluster to join (ray start --head …); None starts a local Ray instance."
    )
    replica_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="llama.cpp threads per replica, also its Ray num_cpus, fixed: replicas sharing a machine "
        "never compete for cores.",
    )
    ingress_replicas: int = Field(
        1, ge=1, le=64, description="HTTP front ends (Serve ingress replicas) behind Serve's proxy; MCP is stateless."
    )
    adapter_affinity: bool = Field(
        True, description="Route by adapter set (Serve multiplexing); off: any replica (measured in bench_ray)."
    )
    app_name: str = Field("loramux", description="The Serve application's name (one per server).")
