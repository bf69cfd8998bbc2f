"""An object schema's `anyOf` / `oneOf` over its properties, in the form llguidance compiles smallest.

SchemaStore's Azure Pipelines lists its 259 task names on `task` (an `anyOf` of one-value enums) and picks
each task's `inputs` with an `anyOf` of 259 branches, each naming its task with `pattern: "^PowerShell@2$"`.
llguidance intersects the object's properties with every branch, `task`'s 259-way choice with each
branch's pattern among them: past its limit on schema size (50,000 nodes, fixed in its code), so the whole
schema was refused. Two rewrites, each exact, and together they compile (in ~0.2 s):

- `with_values_per_branch`: within a branch the property must satisfy both schemas, which is the enum's
  values that satisfy the branch's: computed here, each branch's schema becomes that short enum and the
  object's own becomes `{}` (still listed, so `additionalProperties` still lets the name through). Done
  where every branch names the property, with a schema decidable here for each value: types,
  lengths, values, and a pattern that is one literal string (ECMA-262 anchors; no regex is run, so a
  hostile pattern cannot hang the compile).
- `with_properties_in_branches`, for a schema still too large: the object's keywords copied into each
  branch (`X and anyOf [A, B]` is `anyOf [X and A, X and B]`, and the same for `oneOf`: X holds in every
  branch or in none), which is what llguidance's intersection does, in fewer nodes. Only where merging
  cannot change a keyword's meaning: the branches say nothing but `properties` and `required`, and name no
  property the object's `additionalProperties` would reject.

Both hold for `anyOf` and `oneOf`, and both leave a schema as it is where a JSON pointer could reach inside
what they change (a `$ref` deeper than a definition, a sub-schema with a name of its own).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from engine.llama.cpp.schema_keywords import (
    DEFINITIONS,
    NAMING,
    VALIDATION,
    annotations_of,
    draft_before,
    rewrite_schemas,
    says_nothing,
)
from engine.llama.cpp.unused_definitions import document_references
from engine.schema_check import validator_class

_CHOICES = ("anyOf", "oneOf")
# what a branch's schema of the property may check: each value of the enum is decided against it here
_DECIDABLE = frozenset({"type", "enum", "const", "minLength", "maxLength", "pattern"})
# values decided over the whole schema (Azure Pipelines: 259 x 259); beyond, the rest is left as is. At most
# ~1 s where each is a jsonschema check
MAX_CHECKS = 100_000
MAX_COPIED = 4 << 20  # characters of the objects' keywords copied into branches, over the whole schema
# keywords of an object that merging branches into it could change the meaning of
_NOT_COPIED = frozenset({"$ref", "$dynamicRef", "$recursiveRef", "unevaluatedProperties", "unevaluatedItems"})
# keywords one reads beside another in the same schema: two schemas merge only if each group is in one of them
_READ_TOGETHER = (
    frozenset({"properties", "patternProperties", "additionalProperties"}),
    frozenset({"items", "prefixItems", "additionalItems"}),
    frozenset({"if", "then", "else"}),
    frozenset({"contains", "minContains", "maxContains"}),
    frozenset({"maximum", "exclusiveMaximum"}),  # draft-04: a boolean exclusiveMaximum qualifies maximum
    frozenset({"minimum", "exclusiveMinimum"}),
)
_NOT_MERGED = _NOT_COPIED | NAMING | set(DEFINITIONS)
# what is copied into each branch: the keywords that say which values are valid, not the object's names or
# definitions (they stay where references find them)
_COPIED = VALIDATION - NAMING - set(DEFINITIONS) - set(_CHOICES)
_SHALLOW_REF = re.compile(r"#(/(?:{})/[^/]+)?".format("|".join(re.escape(key) for key in DEFINITIONS)))
_REGEX_SYNTAX = frozenset(".^$*+?()[]{}|\\")  # a "/" in a pattern is a plain character


def with_values_per_branch(schema: dict[str, Any], meta: Any = None) -> dict[str, Any]:
    """`schema` with each enumerated property narrowed per branch where that is exact; `schema` itself
    where nothing is. `meta`: the `$schema` it was sent with (the draft the values are checked in)."""
    checker = _ValueChecker(meta)
    return _rewritten(schema, lambda node: _narrowed(node, checker))


def with_properties_in_branches(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with each object's keywords copied into its branches where that is exact; `schema` itself
    where nothing is."""
    budget = [MAX_COPIED]
    return _rewritten(schema, lambda node: _distributed(node, budget))


def _rewritten(schema: dict[str, Any], rewrite: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    refs = document_references(schema)
    if refs is None or any(not _SHALLOW_REF.fullmatch(ref) for ref in refs):
        return schema
    return rewrite_schemas(schema, rewrite)


class _ValueChecker:
    """Which values satisfy a decidable schema, in the schema's draft, within a budget of decisions."""

    def __init__(self, meta: Any) -> None:
        self._cls = validator_class({"$schema": meta} if isinstance(meta, str) else {})
        self.before_draft_6 = draft_before(meta, 6)
        self.checks_left = MAX_CHECKS

    def values_satisfying(self, schema: Any, values: list[Any]) -> list[Any] | None:
        """The values that satisfy `schema`, in order; None if it is not decidable here or the budget is spent
        (every value decided counts: a hostile schema of many branches and a long enum stays cheap)."""
        if self.checks_left < len(values):
            return None
        self.checks_left -= len(values)
        if isinstance(schema, bool):
            return list(values) if schema else []
        if not isinstance(schema, dict) or not (VALIDATION & schema.keys()) <= _DECIDABLE:
            return None
        literal = None
        if "pattern" in schema and (literal := _literal(schema["pattern"])) is None:
            return None
        if rest := {key: value for key, value in schema.items() if key in VALIDATION and key != "pattern"}:
            validator = self._cls(rest)
            try:
                values = [value for value in values if validator.is_valid(value)]
            except Exception:  # a keyword's value of the wrong kind ({"type": 5}): not decided here
                return None
        # a pattern applies to strings only (ECMA-262: `^` and `$` are the string's ends, no final newline)
        return [value for value in values if literal is None or not isinstance(value, str) or value == literal]


def _narrowed(node: dict[str, Any], checker: _ValueChecker) -> dict[str, Any]:
    properties = node.get("properties")
    if not isinstance(properties, dict) or "$ref" in node:
        return node
    for choice in _CHOICES:
        branches = node.get(choice)
        if not isinstance(branches, list) or len(branches) < 2:
            continue
        if not all(isinstance(b, dict) and "$ref" not in b and isinstance(b.get("properties"), dict) for b in branches):
            continue
        for name, own in properties.items():
            # every branch names the property (where one does not, the object's schema of it must stay)
            values = _enumerated(own, checker.before_draft_6)
            if values is None or not all(name in b["properties"] for b in branches):
                continue
            per_branch = [checker.values_satisfying(b["properties"][name], values) for b in branches]
            if any(narrowed is None for narrowed in per_branch):
                continue
            node = dict(node)
            node[choice] = branches = [
                b | {"properties": b["properties"] | {name: annotations_of(b["properties"][name]) | {"enum": v}}}
                for b, v in zip(branches, per_branch, strict=True)
            ]
            node["properties"] = properties = properties | {name: annotations_of(own)}
    return node


def _distributed(node: dict[str, Any], budget: list[int]) -> dict[str, Any]:
    present = [choice for choice in _CHOICES if choice in node]
    properties = node.get("properties")
    if len(present) != 1 or not isinstance(properties, dict) or _NOT_COPIED & node.keys() or not _names(node):
        return node
    choice = present[0]
    branches = node[choice]
    if not isinstance(branches, list) or len(branches) < 2 or not all(_mergeable(b) for b in branches):
        return node
    named = [b.get("properties", {}).keys() for b in branches]
    if "additionalProperties" in node and any(not names <= properties.keys() for names in named):
        return node
    own = {key: value for key, value in node.items() if key in _COPIED}
    cost = len(json.dumps(own)) * len(branches)
    if cost > budget[0]:
        return node
    budget[0] -= cost
    merged = []
    for branch in branches:
        both = own | {key: value for key, value in branch.items() if key not in VALIDATION}
        both["properties"] = properties | {
            name: _conjunction(properties[name], sub) if name in properties else sub
            for name, sub in branch.get("properties", {}).items()
        }
        required = [*own.get("required", []), *branch.get("required", [])]
        if required:
            both["required"] = list(dict.fromkeys(required))
        merged.append(both)
    return {key: value for key, value in node.items() if key not in _COPIED and key != choice} | {choice: merged}


def _mergeable(branch: Any) -> bool:
    """A branch that says nothing but which properties an object has and what they hold."""
    return (
        isinstance(branch, dict)
        and (VALIDATION & branch.keys()) <= {"properties", "required"}
        and isinstance(branch.get("properties", {}), dict)
        and _names(branch)
    )


def _names(schema: dict[str, Any]) -> bool:
    """Whether the schema's `required` (if any) is a list of names (draft-03's is a boolean, elsewhere)."""
    required = schema.get("required", [])
    return isinstance(required, list) and all(isinstance(name, str) for name in required)


def _conjunction(first: Any, second: Any) -> Any:
    """A schema of the values both schemas allow: one of them when the other says nothing, the two merged
    when their keywords cannot interact (llguidance would intersect an `allOf`, in more nodes)."""
    for one, other in ((first, second), (second, first)):
        if says_nothing(one):
            return other
    if isinstance(first, dict) and isinstance(second, dict):
        mine, theirs = VALIDATION & first.keys(), VALIDATION & second.keys()
        if (
            not mine & theirs
            and not (mine | theirs) & _NOT_MERGED
            and not any(group & mine and group & theirs for group in _READ_TOGETHER)
        ):
            return first | second
    return {"allOf": [first, second]}


def _enumerated(schema: Any, before_draft_6: bool) -> list[Any] | None:
    """The values a schema of `enum` or `const` alone allows, or an `anyOf` of such (annotations and vendors'
    keys aside); None for any other schema (and for `const` before draft-06, where it is no keyword)."""
    if not isinstance(schema, dict):
        return None
    keywords = VALIDATION & schema.keys()
    if keywords == {"anyOf"} and isinstance(schema["anyOf"], list):  # Azure's: one branch per value
        values: list[Any] = []
        for branch in schema["anyOf"]:
            if (more := _enumerated(branch, before_draft_6)) is None:
                return None
            values += more
        return values
    if keywords not in ({"enum"}, {"const"}) or ("const" in schema and before_draft_6):
        return None
    if "const" in schema:
        return [schema["const"]]
    return schema["enum"] if isinstance(schema["enum"], list) else None


def _literal(pattern: Any) -> str | None:
    """The one string a pattern `^…$` of plain characters (or escaped punctuation) matches; None otherwise."""
    if not isinstance(pattern, str) or not (pattern.startswith("^") and pattern.endswith("$")) or len(pattern) < 2:
        return None
    body, out, i = pattern[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 >= len(body) or body[i + 1].isalnum():  # \d, \b, \n, \u…: classes and escapes, not literals
                return None
            out.append(body[i + 1])
            i += 2
            continue
        if char in _REGEX_SYNTAX:
            return None
        out.append(char)
        i += 1
    return "".join(out)
