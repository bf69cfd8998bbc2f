"""The cluster-wide adapter catalogue, a Ray actor: name → the AdapterInfo it was loaded as (source
path, content hash, pin), so a name means the same bytes on every replica; and the replicas that are
up. Replicas load from it on first use; the front end writes it on load_adapter / unload_adapter."""

from __future__ import annotations

import ray

from engine.info import AdapterInfo

CATALOGUE_ACTOR = "loramux-adapter-catalogue"


@ray.remote(num_cpus=0)
class AdapterCatalogue:
    def __init__(self) -> None:
        self._adapters: dict[str, AdapterInfo] = {}
        self._replicas: list[str] = []

    def get(self, name: str) -> AdapterInfo | None:
        return self._adapters.get(name)

    def put(self, info: AdapterInfo) -> None:
        self._adapters[info.name] = info

    def put_if_absent(self, info: AdapterInfo) -> AdapterInfo:
        """The entry for info.name: info if there was none (a replica's first-use load), else the one there."""
        return self._adapters.setdefault(info.name, info)

    def remove(self, name: str) -> AdapterInfo | None:
        return self._adapters.pop(name, None)

    def adapters(self) -> list[AdapterInfo]:
        return sorted(self._adapters.values(), key=lambda a: a.name)

    def join(self, replica: str) -> None:
        if replica not in self._replicas:
            self._replicas.append(replica)

    def leave(self, replica: str) -> None:
        if replica in self._replicas:
            self._replicas.remove(replica)

    def replicas(self) -> list[str]:
        return list(self._replicas)
