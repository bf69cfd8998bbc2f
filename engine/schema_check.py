"""A json_schema request's output checked against the whole schema with `jsonschema`.

Token-by-token enforcement (llguidance) covers most of JSON Schema but not all of it: `uniqueItems`,
`if`/`then`, `not`, `dependentSchemas`, some `format`s and regexes. A request that does not ask for strict
enforcement gets what can be enforced, and its finished output is validated here, so an output that
breaks the schema is an error naming the failing keyword, never broken JSON presented as a success.
Strict requests are validated too: it costs little, and it is what makes "0 invalid successes" a fact.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import anyio
import anyio.to_thread
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, best_match
from referencing.exceptions import Unresolvable

from engine.errors import InvalidRequest, bounded

OUTPUT_CHECK_TIMEOUT_S = 10.0  # a schema's regexes run on the output: a pathological one must not hang a call


def schema_validator(schema: dict[str, Any], what: str = "`json_schema`") -> Any:
    """A validator for the schema's own draft (2020-12 when it names none or a generic one); InvalidRequest
    if it is not a valid JSON Schema. Run when a request is prepared; the output check reuses its verdict."""
    cls, schema = _draft_of(schema)
    try:
        # no format checks of the schema itself: its regexes are ECMA-262 (\p{Cc} and the like), which
        # Python's re does not all take, and llguidance compiles them on its own
        cls.check_schema(schema, format_checker=None)
    except SchemaError as exc:
        where = exc.json_path if hasattr(exc, "json_path") else "$"
        raise InvalidRequest(
            f"{what} is not a valid JSON Schema: `{exc.validator}` at {where}: {bounded(exc.message, 200)}"
        ) from None
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def validator_class(schema: dict[str, Any]) -> Any:
    """The jsonschema validator class for the schema's draft (2020-12 when it names none or a generic one)."""
    return _draft_of(schema)[0]


def _draft_of(schema: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The validator class of the schema's draft, and the schema as that class reads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            cls = validators.validator_for(schema, default=Draft202012Validator)
        except DeprecationWarning:  # a $schema jsonschema does not know (the generic one): the latest draft
            cls, schema = Draft202012Validator, {k: v for k, v in schema.items() if k != "$schema"}
    return cls, schema


def output_problem(schema: dict[str, Any], text: str) -> str | None:
    """Why `text` is not a JSON value valid for `schema` (already checked as a schema when the request was
    prepared: not again here, a large schema's check costs more than the output's), in one line; None if it is."""
    try:
        value = json.loads(text)
    except ValueError:
        return "the output is not a complete JSON value (did a stop string end it early?)"
    try:
        cls, schema = _draft_of(schema)
        error = best_match(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(value))
    except Unresolvable as exc:
        ref = bounded(str(exc.ref), 120)
        return f"the output could not be checked: the schema refers to {ref!r}, which this server does not fetch"
    except RecursionError:
        return "the output could not be checked: the schema's references recurse without end"
    except Exception as exc:  # e.g. a pattern Python's re cannot compile: the check fails, never the server
        return f"the output could not be checked against the schema ({type(exc).__name__}: {bounded(str(exc), 160)})"
    if error is None:
        return None
    return (
        f"the output does not satisfy the schema's `{error.validator}` at {error.json_path}: "
        f"{bounded(error.message, 240)}"
    )


async def checked_output(schema: dict[str, Any], text: str) -> str | None:
    """output_problem in a worker thread (a schema's regexes run there), given up after OUTPUT_CHECK_TIMEOUT_S."""
    try:
        with anyio.fail_after(OUTPUT_CHECK_TIMEOUT_S):
            return await anyio.to_thread.run_sync(output_problem, schema, text, abandon_on_cancel=True)
    except TimeoutError:
        return f"the output could not be checked against the schema within {OUTPUT_CHECK_TIMEOUT_S:g} s"
