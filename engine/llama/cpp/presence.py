"""`oneOf` and `not` over which properties an object has, enforced exactly.

"Either `uses` or `run`, not both" is written `oneOf: [{required: [uses]}, {required: [run]}]`, and
"without `shell`" as `not: {required: [shell]}`. llguidance enforces `oneOf` as `anyOf` (so both could
come out, and the output check then fails) and not `not` at all. When every branch only says which
properties are present, the exclusive choice can be spelled with what llguidance does enforce: a
property present is `required: [p]`, absent is `properties: {p: false}`, and `oneOf: [A, B]` is
`anyOf: [A and not B, B and not A]`, negations pushed inward (De Morgan). Only on objects (`type:
"object"` on the schema or on one it applies beside): on other values `required` and `properties` both
hold, so a property's presence and its absence would both be true there.
"""

from __future__ import annotations

from typing import Any

from engine.llama.cpp.schema_keywords import DATA, NAMED_SCHEMAS, SAME_INSTANCE, VALIDATION, says_nothing

# the keywords whose schemas constrain the object itself; an `if` only tests it, and conditionals.py reads
# `if: {not: X}` as written
_CONSTRAINING = SAME_INSTANCE - {"if"}
MAX_BRANCHES = 8  # a oneOf's exact form grows with the square of its branches
MAX_ATOMS = 256  # presence tests in the exact form: nested oneOfs multiply (a hostile schema must not explode)

# a formula over properties' presence: ("has", name) | ("not", f) | ("all", [f]) | ("any", [f]) | ("one", [f])
Formula = tuple[str, Any]


def with_presence_exact(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each object's presence-only `oneOf` / `not` in a form llguidance enforces; `schema`
    itself where there is none."""
    changed = False

    def walk(value: Any, objects: bool) -> Any:
        """Bottom-up like map_schemas, knowing whether the instance is an object: `type: "object"` here, or
        on a schema this one applies beside (a `then` of one, an `anyOf` branch of one: the same instance)."""
        nonlocal changed
        if isinstance(value, list):
            return [walk(item, objects) for item in value]
        if not isinstance(value, dict):
            return value
        objects = objects or value.get("type") == "object"
        node: dict[str, Any] = {}
        for key, item in value.items():
            if key in NAMED_SCHEMAS and isinstance(item, dict):
                node[key] = {name: walk(sub, False) for name, sub in item.items()}
            else:
                node[key] = item if key in DATA else walk(item, objects and key in _CONSTRAINING)
        if objects and _make_exact(node):
            changed = True
        return node

    rewritten = walk(schema, False)
    return rewritten if changed else schema


def _make_exact(node: dict[str, Any]) -> bool:
    """Rewrite the object schema's presence formulas in place; whether there was any."""
    items = node.get("allOf", [])
    if not isinstance(items, list):
        return False  # not a valid schema: refused before this
    exact: list[dict[str, Any]] = []
    for key in ("oneOf", "not", "anyOf"):  # an anyOf only for a oneOf or not inside it
        if key in node and (found := _enforceable({key: node[key]})) is not None:
            del node[key]
            exact.append(found)
    enforced = [_enforceable(item) for item in items]  # each item applies to this same object
    if not exact and not any(enforced):
        return False
    node["allOf"] = [new or item for new, item in zip(enforced, items, strict=True)] + exact
    return True


def _enforceable(schema: Any) -> dict[str, Any] | None:
    """The exact form of a presence formula that llguidance would not enforce as it is written (it holds a
    oneOf or a not), if it stays small; else None."""
    found = _formula(schema)
    if found is None or not _inexact(found) or _atoms(found) > MAX_ATOMS:
        return None
    return _schema(found)


def _inexact(f: Formula) -> bool:
    op, arg = f
    if op in ("one", "not"):
        return op == "one" or arg[0] != "has"  # not(has p) is exactly `properties: {p: false}` already
    return op != "has" and any(_inexact(part) for part in arg)


def _formula(schema: Any) -> Formula | None:
    """The schema as a formula over presence, or None if it says anything else."""
    if not isinstance(schema, dict):
        return None
    # what validation reads (annotations and vendors' keys aside); `type: object` is said already
    keys = (VALIDATION & schema.keys()) - ({"type"} if schema.get("type") == "object" else set())
    required, properties = schema.get("required"), schema.get("properties", {})
    if keys <= {"required", "properties"} and "required" in keys:
        names = required if isinstance(required, list) and all(isinstance(n, str) for n in required) else None
        if names and isinstance(properties, dict) and all(says_nothing(p) for p in properties.values()):
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
