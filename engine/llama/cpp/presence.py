"""`oneOf` and `not` over which properties an object has, enforced exactly.

"Either `uses` or `run`, not both" is written `oneOf: [{required: [uses]}, {required: [run]}]`, and
"without `shell`" as `not: {required: [shell]}`. llguidance enforces `oneOf` as `anyOf` (so both could
come out, and the output check then fails) and not `not` at all. When every branch only says which
properties are present, the exclusive choice can be spelled with what llguidance does enforce: a
property present is `required: [p]`, absent is `properties: {p: false}`, and `oneOf: [A, B]` is
`anyOf: [A and not B, B and not A]`, negations pushed inward (De Morgan). Only on objects (`type:
"object"` beside it): on other values `required` and `properties` both hold, so a property's presence
and its absence would both be true there.
"""

from __future__ import annotations

from typing import Any

from engine.llama.cpp.schema_keywords import map_schemas

_ANNOTATIONS = frozenset({"$comment", "title", "description", "markdownDescription"})
MAX_BRANCHES = 8  # a oneOf's exact form grows with the square of its branches
MAX_ATOMS = 256  # presence tests in the exact form: nested oneOfs multiply (a hostile schema must not explode)

# a formula over properties' presence: ("has", name) | ("not", f) | ("all", [f]) | ("any", [f]) | ("one", [f])
Formula = tuple[str, Any]


def with_presence_exact(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each object's presence-only `oneOf` / `not` in a form llguidance enforces; `schema`
    itself where there is none."""
    rewritten = map_schemas(schema, _exact_at)
    return rewritten if rewritten != schema else schema


def _exact_at(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("type") != "object":
        return node
    exact: list[dict[str, Any]] = []
    for key in ("oneOf", "not"):
        found = _formula({key: node[key]}) if key in node else None
        if found is not None and _atoms(found) <= MAX_ATOMS:
            del node[key]
            exact.append(_schema(found))
    if exact:
        node["allOf"] = [*node.get("allOf", []), *exact] if isinstance(node.get("allOf", []), list) else exact
    return node


def _formula(schema: Any) -> Formula | None:
    """The schema as a formula over presence, or None if it says anything else."""
    if not isinstance(schema, dict):
        return None
    keys = set(schema) - _ANNOTATIONS
    required, properties = schema.get("required"), schema.get("properties", {})
    if keys <= {"required", "properties"} and "required" in keys:
        names = required if isinstance(required, list) and all(isinstance(n, str) for n in required) else None
        if names and isinstance(properties, dict) and all(p is True or p == {} for p in properties.values()):
            return ("all", [("has", name) for name in names])
        return None
    if keys == {"properties"} and isinstance(properties, dict) and properties:
        if all(p is False for p in properties.values()):
            return ("all", [("not", ("has", name)) for name in properties])
        return None
    if keys == {"not"}:
        inner = _formula(schema["not"])
        return None if inner is None else ("not", inner)
    for keyword, op in (("allOf", "all"), ("anyOf", "any"), ("oneOf", "one")):
        if keys == {keyword} and isinstance(schema[keyword], list) and 0 < len(schema[keyword]) <= MAX_BRANCHES:
            parts = [_formula(branch) for branch in schema[keyword]]
            if any(part is None for part in parts):
                return None
            return (op, parts)
    return None


def _atoms(f: Formula) -> int:
    """How many presence tests the formula's exact form holds (a oneOf of k repeats each branch k times)."""
    op, arg = f
    if op == "has":
        return 1
    if op == "not":
        return _atoms(arg)
    total = sum(_atoms(part) for part in arg)
    return total * len(arg) if op == "one" else total


def _schema(f: Formula, negated: bool = False) -> dict[str, Any]:
    """A formula as a schema of `required`, `properties: {p: false}`, `allOf` and `anyOf` alone."""
    op, arg = f
    if op == "has":
        return {"properties": {arg: False}} if negated else {"required": [arg]}
    if op == "not":
        return _schema(arg, not negated)
    if op == "one":  # exactly one: one branch holds and the others do not
        others = [[("not", other) for j, other in enumerate(arg) if j != i] for i in range(len(arg))]
        f = ("any", [("all", [part, *rest]) for part, rest in zip(arg, others, strict=True)])
        return _schema(f, negated)
    # De Morgan: not all = any not, not any = all not
    keyword = {("all", False): "allOf", ("all", True): "anyOf", ("any", False): "anyOf", ("any", True): "allOf"}
    parts = [_schema(part, negated) for part in arg]
    return parts[0] if len(parts) == 1 else {keyword[(op, negated)]: parts}
