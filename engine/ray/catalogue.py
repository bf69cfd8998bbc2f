"""The cluster-wide adapter catalogue, a Ray actor: name → the AdapterInfo it was loaded as (source
path, content hash, pin), so a name means the same bytes on every replica. Replicas load from it on
first use and record their own first-use loads; the front end writes it on load_adapter / unload_adapter."""

from __future__ import annotations

import ray

from engine.info import AdapterInfo

NAMESPACE = "loramux"


@ray.remote(num_cpus=0)
class AdapterCatalogue:
    def __init__(self) -> None:
        self._adapters: dict[str, AdapterInfo] = {}

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


def catalogue_of(app_name: str) -> ray.actor.ActorHandle:
    """The catalogue of the application `app_name`: one named actor, made by whoever asks first,
    outliving any one replica (detached: a replica's restart must not lose it)."""
    return AdapterCatalogue.options(  # type: ignore[attr-defined]
        name=f"loramux-adapters-{app_name}", namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()
