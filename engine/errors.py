"""Errors the engine raises. Messages are written for the agent that reads them.

EngineError
├── InvalidRequest      the request itself is wrong (bad messages, empty prompt, …)
│   ├── PromptTooLong   the prompt does not fit in one sequence's context
│   ├── UnknownAdapter  it names an adapter that is not loaded
│   ├── AdapterInUse    an unload while queued or running requests use the adapter
│   ├── ConstraintFailed the request's json_schema / grammar could not go on mid-generation
│   └── NonFiniteOutput the request's adapter set made the model's scores NaN or infinite
├── EngineBusy          the bounded queue is full; retry later
├── RequestTimedOut     the request exceeded the engine's request timeout
├── EngineStopped       the engine is shut down or not started
└── EngineFailure       llama.cpp failed (decode error, load error)
"""

from __future__ import annotations

# Every message reaches a caller (a tool result, an OpenAI error object): bounded whatever input it quotes.
MAX_MESSAGE_CHARS = 480


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message` cut to `limit` characters, ending in "…" where it was cut."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def listed(names: list[str] | tuple[str, ...], limit: int = 5, width: int = 40) -> str:
    """Names for an error message: at most `limit`, each cut to `width`, then how many more."""
    shown = ", ".join(bounded(n, width) for n in names[:limit]) or "none"
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class EngineError(Exception):
    """Base class of every error the engine reports to callers; its message is bounded."""

    def __init__(self, message: str = "") -> None:
        super().__init__(bounded(str(message)))


class InvalidRequest(EngineError):
    pass


class PromptTooLong(InvalidRequest):
    pass


class UnknownAdapter(InvalidRequest):
    pass


class AdapterInUse(InvalidRequest):
    pass


class AdapterVersionMismatch(InvalidRequest):
    """A reload's compare-and-swap (expect_sha256) found another version resident."""


class EngineBusy(EngineError):
    pass


class RequestTimedOut(EngineError):
    pass


class EngineStopped(EngineError):
    pass


class EngineFailure(EngineError):
    pass


class ConstraintFailed(InvalidRequest):
    pass


class OutputMismatch(ConstraintFailed):
    """The finished output does not satisfy the request's schema (a keyword that was not enforced)."""


class NonFiniteOutput(InvalidRequest):
    pass
