"""Which adapters stay resident: the engine's (event loop's) view, and its choice of what to evict.

The choice is made on the event loop, not in the core, because only the engine sees every request that
names an adapter, from submission (before its prompt is prepared) to its end: the engine passes the
adapters its open requests name, so an adapter is never evicted between a request's check and its
admission. Eviction takes the least recently used adapter that is neither pinned nor in use; the core's
own hold count refuses an unload of an adapter in use as a last guard.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from engine.errors import EngineBusy
from engine.info import AdapterInfo


@dataclass
class Resident:
    size: int  # bytes of the GGUF handed to llama.cpp: what its tensors take in memory
    pinned: bool
    last_used: float  # time.monotonic() of the last request naming it (or of its load)


class AdapterResidency:
    def __init__(self, max_count: int | None = None, max_bytes: int | None = None) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.resident: dict[str, Resident] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.resident

    def names(self) -> list[str]:
        return sorted(self.resident)

    # -- requests ---------------------------------------------------------------------------------------

    def touch(self, names: Iterable[str]) -> None:
        now = time.monotonic()
        for name in names:
            if (entry := self.resident.get(name)) is not None:
                entry.last_used = now

    # -- what the core answered -------------------------------------------------------------------------

    def loaded(self, info: AdapterInfo) -> None:
        entry = self.resident.get(info.name)
        if entry is None:
            self.resident[info.name] = Resident(info.file_size, info.pinned, time.monotonic())
        else:  # the same name again: a pin, or a new version
            entry.pinned, entry.size = info.pinned, info.file_size

    def unloaded(self, name: str) -> None:
        self.resident.pop(name, None)

    def listed(self, infos: Iterable[AdapterInfo]) -> None:
        previous, self.resident = self.resident, {}
        for info in infos:
            self.loaded(info)
            if info.name in previous:
                self.resident[info.name].last_used = previous[info.name].last_used

    # -- the budget -------------------------------------------------------------------------------------

    def make_room(self, incoming_size: int, in_use: Collection[str]) -> list[str]:
        """The adapters to unload so that one more of `incoming_size` bytes fits, least recently used
        first, never one `in_use` (named by an open request); they are forgotten at once (a request naming
        one meanwhile loads it again). EngineBusy if every resident adapter is pinned or in use."""
        count = len(self.resident) + 1
        size = sum(r.size for r in self.resident.values()) + incoming_size
        if self.max_bytes is not None and incoming_size > self.max_bytes:
            raise EngineBusy(
                f"the adapter needs {incoming_size / 1e6:.1f} MB, more than the whole adapter memory budget "
                f"({self.max_bytes / 1e6:.1f} MB, --adapter-memory-mb)"
            )
        idle = sorted(
            (name for name, r in self.resident.items() if not r.pinned and name not in in_use),
            key=lambda name: self.resident[name].last_used,
        )
        victims: list[str] = []
        while self._over(count, size):
            if not idle:
                raise EngineBusy(
                    f"no adapter can be unloaded to make room: the {len(self.resident)} resident adapters are all "
                    "pinned or used by queued or running requests (the residency budget: --max-loaded-adapters, "
                    "--adapter-memory-mb); retry when requests finish"
                )
            victim = idle.pop(0)
            victims.append(victim)
            count -= 1
            size -= self.resident.pop(victim).size
        return victims

    def _over(self, count: int, size: int) -> bool:
        return (self.max_count is not None and count > self.max_count) or (
            self.max_bytes is not None and size > self.max_bytes
        )
