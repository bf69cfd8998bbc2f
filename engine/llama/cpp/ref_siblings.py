"""Keywords beside a `$ref` that validation ignores, dropped when llguidance cannot compile them.

llguidance refuses a circular reference that has sibling keys (SchemaStore's CircleCI `logic`: a
`$ref` beside a `markdownDescription`), and the whole definition was then relaxed to "anything". Two
drops that keep the schema's meaning exactly: annotations and keywords no draft defines (validators
ignore them everywhere), and, in drafts 3 to 7, where every sibling of `$ref` is ignored, all of them.
"""

from __future__ import annotations

from typing import Any

from engine.llama.cpp.schema_keywords import VALIDATION, draft_before, rewrite_schemas

_CIRCULAR = "circular references with sibling keys"


def exactly_relaxed(schema: dict[str, Any], problem: str, meta: Any) -> dict[str, Any] | None:
    """The schema with `$ref` siblings dropped as far as its meaning allows, when llguidance refused it
    for them (`problem`) and something can be dropped; else None. `meta`: its `$schema` as sent."""
    if _CIRCULAR not in problem:
        return None
    for keep in (VALIDATION, frozenset({"$ref"}) if draft_before(meta, 2019) else None):
        if keep is not None and (dropped := _drop(schema, keep)) is not None:
            return dropped
    return None


def _drop(schema: dict[str, Any], keep: frozenset[str]) -> dict[str, Any] | None:
    """The schema with only `keep` beside each `$ref`; None if that drops nothing."""

    def at(node: dict[str, Any]) -> dict[str, Any]:
        if isinstance(node.get("$ref"), str) and not keep.issuperset(node):
            return {key: item for key, item in node.items() if key in keep}
        return node

    rewritten = rewrite_schemas(schema, at)
    return rewritten if rewritten is not schema else None
