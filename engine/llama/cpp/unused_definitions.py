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

from engine.llama.cpp.schema_keywords import DATA, DEFINITIONS, NAMED_SCHEMAS

# keywords that give a sub-schema a name of its own: a reference could reach it without a JSON pointer
_NAMING = frozenset({"$id", "id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveAnchor", "$recursiveRef"})


def without_unused_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with only the definitions reachable from its root; `schema` itself if none is unused or
    if its references cannot all be followed."""
    containers = {key: schema[key] for key in DEFINITIONS if isinstance(schema.get(key), dict)}
    if not containers:
        return schema
    base = schema.get("$id") if isinstance(schema.get("$id"), str) else ""
    # the root's own `$id` is the base references resolve against, not a name that could be reached otherwise
    whole = {key: value for key, value in schema.items() if key not in ("$id", "id")}
    if _references(whole) is None:
        return schema
    body = {key: value for key, value in whole.items() if key not in containers}
    reached: set[tuple[str, str]] = set()
    pending = [body]
    while pending:
        for ref in _references(pending.pop()) or ():
            target = _target(ref, base)
            if target == UNFOLLOWABLE:
                return schema
            if target is None or target[0] not in containers or target in reached:
                continue  # another document, or the root's own body (walked already)
            reached.add(target)
            if target[1] in containers[target[0]]:
                pending.append(containers[target[0]][target[1]])
    if all(len(_reached_in(reached, key)) == len(defs) for key, defs in containers.items()):
        return schema
    pruned = dict(schema)
    for key, defs in containers.items():
        keep = _reached_in(reached, key)
        pruned[key] = {name: sub for name, sub in defs.items() if name in keep}
    return pruned


def _reached_in(reached: set[tuple[str, str]], container: str) -> set[str]:
    return {name for key, name in reached if key == container}


def _references(value: Any) -> list[str] | None:
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
        named = _NAMING & item.keys()
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


UNFOLLOWABLE = ("", "")


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
    parts = unquote(fragment).split("/")
    if len(parts) == 2 and parts[1] in DEFINITIONS:
        return UNFOLLOWABLE  # the whole bag of definitions
    if len(parts) < 3:
        return None
    name = parts[2].replace("~1", "/").replace("~0", "~")
    return (parts[1], name) if parts[1] in DEFINITIONS else None
