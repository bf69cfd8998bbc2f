"""Errors the engine raises. Messages are written for the agent that reads them.

EngineError
├── InvalidRequest      the request itself is wrong (bad messages, empty prompt, …)
│   ├── PromptTooLong   the prompt does not fit in one sequence's context
│   ├── UnknownAdapter  it names an adapter that is not loaded
│   └── AdapterInUse    an unload while queued or running requests use the adapter
├── EngineBusy          the bounded queue is full; retry later
├── RequestTimedOut     the request exceeded the engine's request timeout
├── EngineStopped       the engine is shut down or not started
└── EngineFailure       llama.cpp failed (decode error, load error)
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine reports to callers."""


class InvalidRequest(EngineError):
    pass


class PromptTooLong(InvalidRequest):
    pass


class UnknownAdapter(InvalidRequest):
    pass


class AdapterInUse(InvalidRequest):
    pass


class EngineBusy(EngineError):
    pass


class RequestTimedOut(EngineError):
    pass


class EngineStopped(EngineError):
    pass


class EngineFailure(EngineError):
    pass
