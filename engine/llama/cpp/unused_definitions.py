"""A schema without the definitions nothing in it refers to.

Schemas as people keep them (SchemaStore's, OpenAPI components) carry a bag of `definitions` / `$defs` and
refer to a few. llguidance resolves every definition when it compiles, so an unused one that refers to
another document (SchemaStore's Drone CI: Kubernetes definitions, used only by its Kubernetes pipeline)
made a schema that never reaches it unenforceable. A definition nothing reaches cannot change which values
are valid, so dropping it is sound; where references cannot be followed with certainty (anchors, nested
`$id`s, dynamic references) the schema is left as it is.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

from engine.llama.cpp.schema_keywords import DATA, DEFINITIONS, NAMED_SCHEMAS, NAMING, pointer_tokens

# a reference whose target cannot be told for certain: then nothing is dropped
UNFOLLOWABLE = ("", "")


def without_unused_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with only the definitions reachable from its root; `schema` itself if none is unused or
    if its references cannot all be followed."""
    containers = {key: schema[key] for key in DEFINITIONS if isinstance(schema.get(key), dict)}
    if not containers:
        return schema
    base = schema.get("$id") if isinstance(schema.get("$id"), str) else ""
    # each part's references, in one walk of the whole schema: the body (without the root's own `$id`, the
    # base references resolve against) and every definition, used or not (one that names itself, with an
    # `$id` or an anchor, could be reached without a pointer: then nothing is dropped)
    body = {key: value for key, value in schema.items() if key not in containers and key not in ("$id", "id")}
    parts: dict[tuple[str, str] | None, Any] = {None: body}
    parts |= {(key, name): sub for key, defs in containers.items() for name, sub in defs.items()}
    refs: dict[tuple[str, str] | None, list[str]] = {}
    for part, value in parts.items():
        found = schema_references(value)
        if found is None:
            return schema
        refs[part] = found
    reached: set[tuple[str, str] | None] = {None}
    pending: list[tuple[str, str] | None] = [None]
    while pending:
        for ref in refs[pending.pop()]:
            target = _target(ref, base)
            if target == UNFOLLOWABLE:
                return schema
            if target in refs and target not in reached:  # a definition that exists, not yet walked
                reached.add(target)
                pending.append(target)
    if len(reached) == len(parts):
        return schema
    pruned = dict(schema)
    for key, defs in containers.items():
        pruned[key] = {name: sub for name, sub in defs.items() if (key, name) in reached}
    return pruned


def document_references(schema: dict[str, Any]) -> list[str] | None:
    """Every `$ref` in a whole schema, its root's `$id` aside (the base they resolve against); None if a
    sub-schema names itself (a reference may then reach it some other way)."""
    return schema_references({key: value for key, value in schema.items() if key not in ("$id", "id")})


def schema_references(value: Any) -> list[str] | None:
    """Every `$ref` in `value`'s schemas; None if a sub-schema names itself (a reference may then reach it
    some other way)."""
    refs: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        named = NAMING & item.keys()
        if named and any(isinstance(item[key], str) for key in named):
            return None
        for key, sub in item.items():
            if key == "$ref" and isinstance(sub, str):
                refs.append(sub)
            elif key in NAMED_SCHEMAS and isinstance(sub, dict):
                stack.extend(sub.values())  # a property may be called "enum" or "$ref"
            elif key not in DATA:
                stack.append(sub)
    return refs


def _target(ref: str, base: str) -> tuple[str, str] | None:
    """("$defs" | "definitions", name) a reference points into; None for one into another document or into
    the root's body; UNFOLLOWABLE for a fragment that is no JSON pointer (a name: `#item`)."""
    if ref.startswith("#"):  # this document, whatever the base (the common case: no URI parsing)
        fragment = ref[1:]
    else:
        try:
            document, fragment = urldefrag(urljoin(base, ref)) if base else urldefrag(ref)
            if document and document != urldefrag(base)[0]:
                return None
        except ValueError:  # not a URI ("http://["): llguidance says so in its own words
            return UNFOLLOWABLE
    if fragment and not fragment.startswith("/"):
        return UNFOLLOWABLE
    tokens = pointer_tokens(unquote(fragment))
    if len(tokens) == 1 and tokens[0] in DEFINITIONS:
        return UNFOLLOWABLE  # the whole bag of definitions
    if len(tokens) < 2 or tokens[0] not in DEFINITIONS:
        return None
    return tokens[0], tokens[1]
