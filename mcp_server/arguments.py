"""Tool arguments: strict, and their errors written for the agent that reads them.

Pydantic's own text ("1 validation error for llm_inferenceArguments … For further information visit
https://errors.pydantic.dev/…") is for programmers. An agent gets one short sentence per problem:
the argument, what was given (truncated), and what is allowed; the whole message stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from engine.errors import bounded

MAX_SHOWN_VALUE = 60
MAX_PROBLEMS = 5

_REWORDINGS = (
    ("Input should be ", "must be "),
    ("String should have ", "must have "),
    ("List should have ", "must have "),
    ("Tuple should have ", "must have "),
    ("Value error, ", ""),
    ("Extra inputs are not permitted", "is not an argument of this tool"),
    ("Field required", "is required"),
)


def shown(value: Any) -> str:
    """A caller's value for an error message: its repr, cut short (a value nested too deeply to repr too)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
    return text if len(text) <= MAX_SHOWN_VALUE else text[: MAX_SHOWN_VALUE - 1] + "…"


def describe(error: ValidationError, *, valid: Iterable[str] = ()) -> str:
    """One sentence per problem, e.g. "`temperature` must be less than or equal to 2 (given 9)"."""
    problems = []
    errors = error.errors(include_url=False)
    for e in errors[:MAX_PROBLEMS]:
        where = bounded(".".join(str(part) for part in e["loc"]), MAX_SHOWN_VALUE) or "arguments"
        what = e["msg"]
        for old, new in _REWORDINGS:
            what = what.replace(old, new)
        if e["type"] == "extra_forbidden":
            names = ", ".join(valid)
            problems.append(f"`{where}` {what}" + (f" (valid arguments: {names})" if names else ""))
        elif e["type"] == "missing":
            problems.append(f"`{where}` {what}")
        else:
            problems.append(f"`{where}` {what} (given {shown(e.get('input'))})")
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS} more problems")
    return bounded("invalid arguments: " + "; ".join(problems))


def unknown_arguments(arguments: Iterable[str], valid: Iterable[str]) -> str | None:
    """The error for argument names the tool does not have (typos must not be ignored silently)."""
    known = list(valid)
    unknown = [name for name in arguments if name not in known]
    if not unknown:
        return None
    names = ", ".join(f"`{shown(name)[1:-1]}`" for name in unknown[:MAX_PROBLEMS])
    return bounded(f"invalid arguments: unknown argument {names}; valid arguments: {', '.join(known)}")
