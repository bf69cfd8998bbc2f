"""The residency budget's choice, alone: least recently used first, never pinned or in-use adapters."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.errors import EngineBusy
from engine.info import AdapterInfo
from engine.llama.adapters.residency import AdapterResidency


def info(name: str, size: int = 100, pinned: bool = False) -> AdapterInfo:
    return AdapterInfo(
        name=name, path=name, file_size=size, sha256="0" * 64, rank=8, alpha=16.0, target_modules=(),
        architecture="llama", loaded_at=datetime.now(UTC), requests_served=0, requests_in_flight=0, pinned=pinned,
    )  # fmt: skip


def residency(*names: str, max_count: int | None = 3, max_bytes: int | None = None) -> AdapterResidency:
    r = AdapterResidency(max_count, max_bytes)
    for name in names:
        r.loaded(info(name))
    return r


def test_room_is_made_least_recently_used_first() -> None:
    r = residency("a", "b", "c")
    r.touch(["a"])  # b is now the least recently used
    assert r.make_room(100, ()) == ["b"]
    assert r.names() == ["a", "c"]
    assert residency("a", "b").make_room(100, ()) == []  # room already


def test_pinned_and_in_use_adapters_are_never_chosen() -> None:
    r = residency("a", "b", "c")
    r.loaded(info("a", pinned=True))
    assert r.make_room(100, in_use={"b"}) == ["c"]
    r = residency("a", "b", "c")
    with pytest.raises(EngineBusy, match="pinned or used by queued or running requests"):
        r.make_room(100, in_use={"a", "b", "c"})
    in_use = {"a", "c"}  # b's request ended
    assert r.make_room(100, in_use) == ["b"] and "b" not in in_use


def test_a_memory_budget_evicts_until_the_new_adapter_fits() -> None:
    r = residency("a", "b", "c", max_count=None, max_bytes=350)
    assert r.make_room(200, ()) == ["a", "b"]  # 300 + 200 > 350; 100 + 200 fits
    with pytest.raises(EngineBusy, match="more than the whole adapter memory budget"):
        r.make_room(400, ())


def test_listing_keeps_last_use() -> None:
    r = residency("a", "b")
    r.touch(["a"])
    last = r.resident["a"].last_used
    r.listed([info("a"), info("c")])
    assert r.names() == ["a", "c"] and r.resident["a"].last_used == last
