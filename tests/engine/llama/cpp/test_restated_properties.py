"""A branch's `$ref` to its own object's property schema dropped: exact (jsonschema decides every value the
same way before and after), left alone where a reference reaches the branch from elsewhere, and what lets
SchemaStore's Dependabot have its `schedule` and `directory` rules enforced."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import check_jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator, Draft202012Validator

from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.cpp.restated_properties import without_restated_properties
from tests.engine.llama.cpp.conftest import enforces

OWN = {"a": {"type": "integer", "minimum": 1}, "b": {"enum": ["x", "y"]}}


def restating(name: str, *required: str) -> dict[str, Any]:
    again = {"$ref": f"#/$defs/o/properties/{name}", "description": "again"}
    return {"properties": {name: again}, "required": list(required)}


BRANCHES = st.sampled_from([restating("a", "a"), restating("b", "b"), restating("a"), {"required": ["b"]}])
SAME_INSTANCE = st.one_of(
    st.lists(BRANCHES, min_size=1, max_size=3).map(lambda items: {"oneOf": items}),
    st.lists(BRANCHES, min_size=1, max_size=3).map(lambda items: {"anyOf": items}),
    BRANCHES.map(lambda branch: {"not": branch}),
    st.tuples(BRANCHES, BRANCHES).map(lambda pair: {"if": {"not": pair[0]}, "then": pair[1], "else": pair[0]}),
)
SCHEMAS = st.lists(SAME_INSTANCE, min_size=1, max_size=2).map(
    lambda parts: {"$defs": {"o": {"type": "object", "properties": OWN, "allOf": parts}}, "$ref": "#/$defs/o"}
)
_ABSENT = object()
INSTANCES = [
    {name: value for name, value in (("a", a), ("b", b)) if value is not _ABSENT}
    for a in [_ABSENT, 0, 1, "s"]
    for b in [_ABSENT, "x", "z"]
]


@settings(max_examples=200, deadline=None)
@given(schema=SCHEMAS)
def test_the_rewrite_decides_every_value_as_the_schema_does(schema: dict[str, Any]) -> None:
    rewritten = without_restated_properties(schema)
    assert "properties/a" not in json.dumps(rewritten["$defs"]["o"]["allOf"])
    for instance in INSTANCES:
        assert Draft202012Validator(schema).is_valid(instance) == Draft202012Validator(rewritten).is_valid(instance)


def test_left_alone_where_the_object_s_properties_may_not_hold() -> None:
    owner = {"type": "object", "properties": OWN, "oneOf": [restating("a", "a"), restating("b", "b")]}
    # the branch is also reached from elsewhere, where the object's own `a` is not checked
    reached = {"$defs": {"o": owner}, "properties": {"p": {"$ref": "#/$defs/o/oneOf/0"}}}
    # a reference to another object's property is no restatement
    other = {"$defs": {"o": owner | {"oneOf": [{"properties": {"a": {"$ref": "#/$defs/x/properties/a"}}}] * 2}}}
    # beside a $ref (ignored up to draft 7), the object's properties may not apply
    beside_ref = {"$defs": {"o": owner | {"$ref": "#/$defs/z"}, "z": {}}}
    # the same document named by its URI: the branch reached without a plain "#/…"
    by_uri = {
        "$id": "https://example.com/s",
        "$defs": {"o": owner},
        "not": {"$ref": "https://example.com/s#/$defs/o/oneOf/0"},
    }
    for schema in (reached, other, beside_ref, by_uri):
        assert without_restated_properties(schema) is schema
    assert Draft202012Validator(reached).is_valid({"p": {"a": 0}}) is False  # what dropping would change


DEPENDABOT = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "dependabot.json"


def test_dependabot_s_rules_are_enforced(compiler: ConstraintCompiler) -> None:
    """`schedule` unless `multi-ecosystem-group`; `directory` or `directories`, not both. They were checked
    only after (llguidance found the rewrite too large), and a small model left `schedule` out."""
    schema = json.loads(DEPENDABOT.read_text())

    def takes(*update: str) -> bool:  # in any order of keys: intersections reorder an object's properties
        for keys in itertools.permutations(update):
            items = f"[{{{', '.join(keys)}}}]"
            for doc in (f'{{"version": 2, "updates": {items}}}', f'{{"updates": {items}, "version": 2}}'):
                if enforces(compiler, schema, doc):
                    assert Draft7Validator(schema).is_valid(json.loads(doc))
                    return True
        return False

    ecosystem, directory, daily = '"package-ecosystem": "npm"', '"directory": "/"', '"schedule": {"interval": "daily"}'
    assert takes(ecosystem, directory, daily)
    assert takes(ecosystem, directory, '"multi-ecosystem-group": "g"')
    assert not takes(ecosystem, directory)
    assert not takes(ecosystem, directory, '"directories": ["/"]', daily)


@pytest.mark.parametrize("strict", [True, False])
def test_a_restatement_alone_is_enforced_as_presence(compiler: ConstraintCompiler, strict: bool) -> None:
    owner = {"type": "object", "properties": OWN, "additionalProperties": False}
    schema = {"$defs": {"o": owner | {"oneOf": [restating("a", "a"), restating("b", "b")]}}, "$ref": "#/$defs/o"}
    assert enforces(compiler, schema, '{"a": 2}', strict=strict)
    assert not enforces(compiler, schema, '{"a": 2, "b": "x"}', strict=strict)  # oneOf: exactly (presence.py)
