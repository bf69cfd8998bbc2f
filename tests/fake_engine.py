"""An `InferenceEngine` in plain Python, for fast in-process tests of the front ends (no model, no thread).

Its text is scripted: each request answers `reply` word by word (at most `max_tokens` words), or the
error set in `fail_with`. Adapters are names in a dict; `hold` keeps requests waiting until released, so
tests can see queued statuses, in-use adapters and drains.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import anyio
import anyio.lowlevel

from engine import (
    AdapterInfo,
    AdapterInUse,
    AdapterListing,
    Capabilities,
    EngineError,
    EngineState,
    EngineStats,
    EngineStopped,
    GenerateRequest,
    GenerationResult,
    InvalidRequest,
    LoadedAdapter,
    ModelInfo,
    RequestStatus,
    TextDelta,
    UnknownAdapter,
)
from engine.result import Receipt, Timings, Usage

MODEL = ModelInfo(
    name="fake-model.gguf",
    sha256="0" * 64,
    description="a scripted fake",
    architecture="fake",
    parameters=1,
    size_bytes=1,
    context_per_request=4096,
    max_running_requests=4,
    capabilities=Capabilities(max_adapters_per_request=2, constrained_output=False),
)


class FakeEngine:
    def __init__(self, reply: str = "one two three four five six", capabilities: Capabilities | None = None) -> None:
        self.reply = reply.split(" ")
        self.model = MODEL if capabilities is None else MODEL.model_copy(update={"capabilities": capabilities})
        self.adapters: dict[str, AdapterInfo] = {}
        self.requests: list[GenerateRequest] = []  # every request generated, in order
        self.fail_with: EngineError | None = None
        self.hold = anyio.Event()
        self.hold.set()  # clear it to keep requests queued
        self._state = EngineState.STOPPED
        self._running = 0
        self._finished = 0

    async def __aenter__(self) -> Self:
        self._state = EngineState.READY
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._state = EngineState.STOPPED

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def model_info(self) -> ModelInfo | None:
        return self.model if self._state is EngineState.READY else None

    async def drain(self, grace_s: float) -> int:
        self._state = EngineState.STOPPING
        return self._running

    def generate(self, request: GenerateRequest) -> FakeStream:
        return FakeStream(self, request)

    async def load_adapter(
        self, name: str, path: str, *, pin: bool = False, expect_sha256: str | None = None
    ) -> LoadedAdapter:
        if not path.endswith(".gguf"):
            raise InvalidRequest(f"{path!r} is not an adapter file")
        if name in self.adapters:
            return LoadedAdapter(adapter=self.adapters[name], newly_loaded=False)
        self.adapters[name] = AdapterInfo(
            name=name, path=path, file_size=1, sha256=hashlib.sha256(path.encode()).hexdigest(), rank=8, alpha=16.0,
            target_modules=("attn_v",), architecture="fake", loaded_at=datetime.now(UTC), requests_served=0,
            requests_in_flight=0, pinned=pin,
        )  # fmt: skip
        return LoadedAdapter(adapter=self.adapters[name], newly_loaded=True)

    async def unload_adapter(self, name: str) -> AdapterInfo:
        if name not in self.adapters:
            raise UnknownAdapter(f"no adapter named {name!r} is loaded")
        if self._running and any(a.name == name for r in self.requests for a in r.adapters):
            raise AdapterInUse(f"adapter {name!r} is in use")
        return self.adapters.pop(name)

    async def list_adapters(self) -> AdapterListing:
        return AdapterListing(
            base_model=self.model, adapters=list(self.adapters.values()), adapter_directories=["/fake"],
            available_files=["caps.gguf"],
        )  # fmt: skip

    def stats(self) -> EngineStats:
        return EngineStats(running=self._running, requests_finished=self._finished, adapters_loaded=len(self.adapters))


class FakeStream:
    def __init__(self, engine: FakeEngine, request: GenerateRequest) -> None:
        self._engine = engine
        self._request = request
        self._status = RequestStatus("preparing")
        self._aborted = False
        self.result: GenerationResult | None = None

    async def __aenter__(self) -> Self:
        engine = self._engine
        if engine.state is not EngineState.READY:
            raise EngineStopped("the engine is not running")
        for ref in self._request.adapters:
            if ref.name not in engine.adapters:
                raise UnknownAdapter(f"no adapter named {ref.name!r} is loaded")
        engine.requests.append(self._request)
        engine._running += 1
        self._status = RequestStatus("queued", ahead=0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.result is None:
            self.abort()
        self._engine._running -= 1

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[TextDelta]:
        await self._engine.hold.wait()
        if self._engine.fail_with is not None:
            raise self._engine.fail_with
        self._status = RequestStatus("generating")
        words = self._engine.reply[: self._request.sampling.max_tokens]
        text = ""
        for i, word in enumerate(words):
            if self._aborted:
                break
            piece = word if i == 0 else " " + word
            text += piece
            yield TextDelta(piece, i + 1, 0.0)
            await anyio.lowlevel.checkpoint()
        reason = "cancelled" if self._aborted else "length" if len(words) < len(self._engine.reply) else "stop"
        prompt_tokens = len(self._request.prompt or "") or sum(len(m.content) for m in self._request.messages or ())
        completion = len(text.split()) if text else 0
        self.result = GenerationResult(
            text=text,
            finish_reason=reason,
            usage=Usage(
                prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
            ),
            timings=Timings(queue_ms=0.0, ttft_ms=0.0, total_ms=0.0, tokens_per_second=0.0),
            receipt=Receipt(
                model=MODEL.name, model_sha256=MODEL.sha256, adapters=[], seed=0, sampling=self._request.sampling
            ),
        )
        self._engine._finished += 1

    def abort(self) -> None:
        self._aborted = True

    def status(self) -> RequestStatus:
        return self._status
