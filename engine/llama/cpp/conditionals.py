"""`if` / `then` / `else` as choices llguidance can enforce, for schemas that are not strict.

llguidance does not implement `if`: not strict, it ignored them and only the check of the finished output
saw them, so a small model broke them often (SchemaStore's GitHub Action and issue-form schemas: an
`outputs` the `then`/`else` make an object came out as a list; a form item without the `attributes` its
`type` requires). Two rewrites, each letting through every value the schema accepts (the output is still
checked against the schema as written, so a looser grammar costs nothing in correctness):

- `if A then B else C` is (A and B) or (not A and C), so every valid value matches `anyOf: [A and B, C]`
  (and `if: {not: X}` swaps the branches: without `else`, it is exactly `anyOf: [X, B]`);
- `if` / `then` pairs keyed on one required property's value, where that property takes finitely many
  values (a `type` enum, the pattern of GitHub's issue forms and many more), are exactly one choice per
  value: `anyOf: [{p: v1} and the thens for v1, {p: v2} and …]`.

Other conditionals stay as they are (not enforced, checked after).
"""

from __future__ import annotations

import json
from typing import Any

from engine.llama.cpp.schema_keywords import ANNOTATIONS, draft_before, pointer_tokens, rewrite_schemas

MAX_CHOICES = 64  # values of a keyed property: more, and the conditionals are left as they are


def with_conditionals_as_choices(schema: dict[str, Any], meta: Any = None) -> dict[str, Any]:
    """`schema` with its conditionals rewritten where that is sound; `schema` itself if none is. `meta`: the
    `$schema` it was sent with (the draft)."""
    if draft_before(meta, 7):
        return schema  # before draft-07, `if` is no keyword: validators ignore it, and so must this
    return rewrite_schemas(schema, lambda node: _choices(node, schema))


def _choices(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """The node with its conditionals (its own, and `allOf` items that are only one) as choices where sound;
    the node itself where none is rewritten."""
    items = node.get("allOf", [])
    if not isinstance(items, list):
        return node  # not a valid schema: refused before this
    listed = [item for item in items if _only_conditional(item)]
    conditionals = [_conditional(item) for item in ([node] if "if" in node else []) + listed]
    added: list[Any] = []
    pairs: list[dict[str, Any]] = []
    for cond in conditionals:
        test, then, otherwise = cond["if"], cond.get("then", True), cond.get("else")
        negated = test.get("not") if isinstance(test, dict) and set(test) == {"not"} else None
        if negated is not None and otherwise is None:
            added.append({"anyOf": [negated, then]})  # if not X then B: X or B, exactly
        elif negated is not None:
            added.append({"anyOf": [{"allOf": [negated, otherwise]}, then]})  # if X then C else B
        elif otherwise is not None:
            added.append({"anyOf": [{"allOf": [test, then]}, otherwise]})
        else:
            pairs.append(cond)
    keyed = _keyed_choices(node, pairs, root) if pairs else None
    if keyed is not None:
        added.append(keyed)
        pairs = []
    if not added:
        return node
    rewritten = {key: value for key, value in node.items() if key not in ("if", "then", "else")}
    # conditionals not rewritten stay, as `allOf` items (the same meaning), for the output check
    rewritten["allOf"] = [item for item in items if not _only_conditional(item)] + pairs + added
    return rewritten


def _only_conditional(item: Any) -> bool:
    return isinstance(item, dict) and "if" in item and set(item) <= {"if", "then", "else", *ANNOTATIONS}


def _conditional(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: schema[key] for key in ("if", "then", "else") if key in schema}


def _keyed_choices(node: dict[str, Any], pairs: list[dict[str, Any]], root: dict[str, Any]) -> dict[str, Any] | None:
    """One choice per value of the property every `if` tests (`{"properties": {p: {"const": v}}}`), when
    `p` is required and takes finitely many values; else None."""
    keys = [_tested(pair["if"]) for pair in pairs]
    if any(k is None for k in keys) or len({k[0] for k in keys if k is not None}) != 1:
        return None
    name = keys[0][0]  # type: ignore[index]
    required = node.get("required")
    properties = node.get("properties")
    if not (isinstance(required, list) and name in required and isinstance(properties, dict)):
        return None
    values = _finite_values(properties.get(name), root)
    if values is None or len(values) > MAX_CHOICES:
        return None
    choices = []
    for value in values:
        # JSON equality, not Python's (True == 1): a `then` joined to a value its `if` does not test would
        # refuse valid values; one missed only loosens the choice
        same = [_same(key[1], value) for key in keys]  # type: ignore[index]
        thens = [pair.get("then", True) for pair, hit in zip(pairs, same, strict=True) if hit]
        choices.append({"allOf": [{"properties": {name: {"const": value}}}, *thens]})
    return {"anyOf": choices}


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _tested(condition: Any) -> tuple[str, Any] | None:
    """(p, v) for an `if` that holds exactly when property p (if present) equals v."""
    if not isinstance(condition, dict) or set(condition) - {"properties", "required", "type"}:
        return None
    properties = condition.get("properties")
    if not isinstance(properties, dict) or len(properties) != 1:
        return None
    ((name, test),) = properties.items()
    if condition.get("required", [name]) != [name] or condition.get("type", "object") != "object":
        return None
    if isinstance(test, dict) and set(test) == {"const"}:
        return name, test["const"]
    if isinstance(test, dict) and set(test) == {"enum"} and isinstance(test["enum"], list) and len(test["enum"]) == 1:
        return name, test["enum"][0]
    return None


def _finite_values(schema: Any, root: dict[str, Any], depth: int = 0) -> list[Any] | None:
    """The values a property's schema allows when it lists them (`const`, `enum`, through local `$ref`s)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    if "const" in schema:
        return [schema["const"]]
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in pointer_tokens(ref[1:]):
            if not isinstance(target, dict) or part not in target:
                return None
            target = target[part]
        return _finite_values(target, root, depth + 1)
    return None
