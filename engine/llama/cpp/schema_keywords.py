"""Which JSON Schema keywords hold what, for the passes that walk a schema before llguidance compiles it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEFINITIONS = ("$defs", "definitions")
# maps of names to schemas: a property may be called "enum", "if" or "$ref"
NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "dependentSchemas", *DEFINITIONS})
# values that are data, not schemas (a `$ref` inside an example is no reference)
DATA = frozenset({"enum", "const", "examples", "default"})
# keywords that only annotate: a schema of these alone says nothing about validity
ANNOTATIONS = frozenset({"$comment", "title", "description", "markdownDescription"})
# keywords whose schemas apply to the same instance as the schema they are in (not to a property or an item)
SAME_INSTANCE = frozenset({"allOf", "anyOf", "oneOf", "not", "if", "then", "else"})
# keywords that give a sub-schema a name of its own: a reference could reach it without a JSON pointer
NAMING = frozenset({"$id", "id", "$anchor", "$dynamicAnchor", "$dynamicRef", "$recursiveAnchor", "$recursiveRef"})
# keywords that decide validity in some draft (2020-12's and the older ones', naming and definitions included);
# the rest annotate, or are a vendor's own ("ignoreCase", "doNotSuggest"): validators ignore them
VALIDATION = frozenset(
    {
        "$ref", "$id", "id", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor",
        "$defs", "definitions", "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
        "exclusiveMinimum", "maxLength", "minLength", "pattern", "format", "maxItems", "minItems", "uniqueItems",
        "maxContains", "minContains", "maxProperties", "minProperties", "required", "dependentRequired",
        "dependencies", "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas",
        "prefixItems", "items", "additionalItems", "contains", "properties", "patternProperties",
        "additionalProperties", "propertyNames", "unevaluatedItems", "unevaluatedProperties", "disallow",
        "extends", "divisibleBy",
    }
)  # fmt: skip


def says_nothing(schema: Any) -> bool:
    """`true`, or a schema of annotations alone (`{}`, `{"description": …}`, a vendor's keys): every value
    satisfies it."""
    return schema is True or (isinstance(schema, dict) and not VALIDATION & schema.keys())


def annotations_of(schema: Any) -> dict[str, Any]:
    """What of a schema validation ignores (its description, a vendor's keys): kept where it is rewritten."""
    return {key: value for key, value in schema.items() if key not in VALIDATION} if isinstance(schema, dict) else {}


def draft_before(meta: Any, draft: int) -> bool:
    """Whether `$schema` (as sent) names a json-schema.org draft older than `draft` (3, 4, 6, 7; 2019 and
    2020 are newer than all of them)."""
    return isinstance(meta, str) and any(f"draft-0{n}" in meta for n in (3, 4, 6, 7) if n < draft)


def pointer_tokens(pointer: str) -> list[str]:
    """A JSON pointer's reference tokens ("/definitions/a~1b" -> ["definitions", "a/b"])."""
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]


def map_schemas(value: Any, at_node: Callable[[dict[str, Any]], Any]) -> Any:
    """`value` rebuilt bottom-up, each object in it passed through `at_node` once its own sub-schemas have
    been (maps of names to schemas keep their names; data values are left as they are)."""
    if isinstance(value, list):
        return [map_schemas(item, at_node) for item in value]
    if not isinstance(value, dict):
        return value
    node: dict[str, Any] = {}
    for key, item in value.items():
        if key in NAMED_SCHEMAS and isinstance(item, dict):
            node[key] = {name: map_schemas(sub, at_node) for name, sub in item.items()}
        else:
            node[key] = item if key in DATA else map_schemas(item, at_node)
    return at_node(node)


def rewrite_schemas(schema: dict[str, Any], rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """map_schemas with a rewrite that returns a node itself where it changes nothing: `schema` itself (the
    same object) where no node changed, so a pass's caller can tell."""
    changed = False

    def at(node: dict[str, Any]) -> dict[str, Any]:
        nonlocal changed
        done = rewrite(node)
        changed = changed or done is not node
        return done

    rewritten = map_schemas(schema, at)
    return rewritten if changed else schema
