"""A property's schema said again, by reference, in a branch of the object that already says it: dropped.

SchemaStore's Dependabot writes "`schedule` is required unless `multi-ecosystem-group` is given" as
`if: {not: …}, then: {properties: {schedule: {$ref: "#/definitions/update/properties/schedule"}},
required: [schedule]}` inside `update` itself, and "`directory` or `directories`" the same way. The
reference restates what `update`'s own `properties` already require of the value, so within `update` it
adds nothing; but it makes the branches more than presence tests, so presence.py could not make the
`oneOf` exact, and llguidance found the conditionals' choices too large (it intersects the whole
referenced schema into every combination): Dependabot's `schedule` was left to the check after, and a
small model left it out. The restated schema becomes `{}` (the property still named): exact, since any
value the object accepts satisfies it there, whatever the branch's polarity (`not`, `if`, `oneOf`).

Only in schemas that apply to the object itself (its `allOf`, `anyOf`, `oneOf`, `not`, `if`, `then`,
`else`, nested), only for a `$ref` to that same object's property, and not where a reference reaches the
branch from elsewhere (there the object's own properties would not hold).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from engine.llama.cpp.schema_keywords import (
    DATA,
    NAMED_SCHEMAS,
    SAME_INSTANCE,
    VALIDATION,
    annotations_of,
    pointer_tokens,
)
from engine.llama.cpp.unused_definitions import document_references

Path = tuple[str, ...]


def without_restated_properties(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each restated property schema dropped where that is exact; `schema` itself where none is."""
    refs = document_references(schema)
    if refs is None or not any(ref.startswith("#/") and "/properties/" in ref for ref in refs):
        return schema  # no reference to a property's schema: nothing restated (most schemas: no walk)
    if any(not ref.startswith("#") for ref in refs):
        return schema  # a URI could name this document and point inside a branch without a plain "#/…"
    # every path a reference points at or through: "does one reach inside this schema" is one lookup
    reached: set[Path] = set()
    for ref in refs:
        if ref.startswith("#/"):
            target = tuple(pointer_tokens(unquote(ref[1:])))
            reached.update(target[:n] for n in range(len(target) + 1))
    changed = False

    def walk(value: Any, path: Path) -> Any:
        nonlocal changed
        if isinstance(value, list):
            return [walk(item, (*path, str(i))) for i, item in enumerate(value)]
        if not isinstance(value, dict):
            return value
        node: dict[str, Any] = {}
        for key, item in value.items():
            if key in NAMED_SCHEMAS and isinstance(item, dict):
                node[key] = {name: walk(sub, (*path, key, name)) for name, sub in item.items()}
            else:
                node[key] = item if key in DATA else walk(item, (*path, key))
        if isinstance(node.get("properties"), dict) and "$ref" not in node:  # drafts up to 7 ignore its siblings
            for key in SAME_INSTANCE & node.keys():
                dropped = _dropped(node[key], (*path, key), path, node["properties"], reached)
                if dropped is not node[key]:
                    node[key] = dropped
                    changed = True
        return node

    rewritten = walk(schema, ())
    return rewritten if changed else schema


def _dropped(value: Any, at: Path, owner: Path, properties: dict[str, Any], reached: set[Path]) -> Any:
    """`value` (a schema applying to the object at `owner`, found at `at`) with its restatements of the
    object's `properties` dropped, down through the schemas that apply to the same object; `value` itself if
    it has none, or if a reference reaches it (or something inside it) from elsewhere."""
    if at in reached:
        return value
    if isinstance(value, list):
        items = [_dropped(item, (*at, str(i)), owner, properties, reached) for i, item in enumerate(value)]
        return items if any(new is not old for new, old in zip(items, value, strict=True)) else value
    if not isinstance(value, dict):
        return value
    node = dict(value)
    own = node.get("properties")
    if isinstance(own, dict):
        kept = {name: _restating(sub, name, owner, properties) for name, sub in own.items()}
        if any(kept[name] is not own[name] for name in own):
            node["properties"] = kept
    for key in SAME_INSTANCE & node.keys():
        node[key] = _dropped(node[key], (*at, key), owner, properties, reached)
    return node if any(node[key] is not value[key] for key in value) else value


def _restating(sub: Any, name: str, owner: Path, properties: dict[str, Any]) -> Any:
    """`{}` (its annotations kept) for a `$ref` to the owner's own schema of the property `name`; else `sub`."""
    if not isinstance(sub, dict) or name not in properties or (VALIDATION & sub.keys()) != {"$ref"}:
        return sub
    ref = sub["$ref"]
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return sub
    if tuple(pointer_tokens(unquote(ref[1:]))) != (*owner, "properties", name):
        return sub
    return annotations_of(sub)
