"""`if` / `then` / `else` rewritten as choices llguidance enforces (not strict): never stricter than the
schema (every value it accepts, the rewrite accepts: checked with jsonschema on generated values), exact
where the docstring says so, and enforced token by token by the real compiler."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from engine.llama.cpp.conditionals import with_conditionals_as_choices
from engine.llama.cpp.constraints import ConstraintCompiler
from tests.engine.llama.cpp.conftest import enforces

# GitHub's issue forms: a form item's `type` decides which `attributes` it needs
FORM_ITEM = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"$ref": "#/definitions/type"}, "attributes": {}, "id": {"type": "string"}},
    "allOf": [
        {"if": {"properties": {"type": {"const": "markdown"}}}, "then": {"required": ["attributes"]}},
        {"if": {"properties": {"type": {"const": "input"}}}, "then": {"required": ["attributes", "id"]}},
        {"if": {"properties": {"type": {"const": "input"}}}, "then": {"properties": {"id": {"minLength": 2}}}},
        {"not": {"required": ["nothing"]}},  # kept as it is
    ],
    "definitions": {"type": {"enum": ["markdown", "input", "checkboxes"]}},
}
# GitHub's action metadata: what `outputs` is depends on `runs.using`
ACTION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"runs": {"type": "object"}, "outputs": {}},
    "if": {"properties": {"runs": {"properties": {"using": {"const": "composite"}}}}},
    "then": {"properties": {"outputs": {"type": "object", "required": ["value"]}}},
    "else": {"properties": {"outputs": {"type": "object"}}},
}
# Dependabot: `schedule` is required unless a group is named
UPDATE = {
    "type": "object",
    "properties": {"schedule": {"type": "string"}, "group": {"type": "string"}},
    "if": {"not": {"required": ["group"]}},
    "then": {"required": ["schedule"]},
}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "x", "markdown", "input", "composite"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["type", "attributes", "id", "runs", "using", "outputs", "value",
                                       "schedule", "group", "nothing"]), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(value=JSON)
def test_the_rewrite_accepts_every_value_the_schema_accepts(value: Any) -> None:
    for schema, exact in ((FORM_ITEM, True), (ACTION, False), (UPDATE, True)):
        rewritten = with_conditionals_as_choices(schema, schema.get("$schema"))
        assert rewritten is not schema
        valid = Draft7Validator(schema).is_valid(value)
        valid_rewritten = Draft7Validator(rewritten).is_valid(value)
        assert valid <= valid_rewritten, (schema, value)  # never stricter
        if exact:
            assert valid == valid_rewritten, (schema, value)


def test_what_is_rewritten_and_what_is_left() -> None:
    form = with_conditionals_as_choices(FORM_ITEM, FORM_ITEM["$schema"])
    assert form["allOf"][0] == {"not": {"required": ["nothing"]}}
    (choices,) = form["allOf"][1:]
    assert [c["allOf"][0] for c in choices["anyOf"]] == [
        {"properties": {"type": {"const": v}}} for v in ("markdown", "input", "checkboxes")
    ]
    assert len(choices["anyOf"][1]["allOf"]) == 3  # both `then`s of "input"
    assert "if" not in with_conditionals_as_choices(ACTION) and "if" not in with_conditionals_as_choices(UPDATE)
    # a property of finitely many values but not required: an absent `type` meets every `if`; left as is
    optional = {**FORM_ITEM, "required": []}
    assert "if" in str(with_conditionals_as_choices(optional)["allOf"])
    # before draft-07 `if` is no keyword at all
    assert with_conditionals_as_choices(ACTION, "http://json-schema.org/draft-04/schema#") is ACTION
    assert with_conditionals_as_choices({"type": "object"}) == {"type": "object"}
    # a property called "if" is no conditional
    named = {"type": "object", "properties": {"if": {"type": "string"}, "then": {"type": "string"}}}
    assert with_conditionals_as_choices(named) is named


def test_json_equality_decides_which_then_goes_with_which_value() -> None:
    """True == 1 in Python, not in JSON: the `then` of an `if` testing 1 must not join the choice for true."""
    schema = {
        "type": "object",
        "required": ["flag"],
        "properties": {"flag": {"enum": [True, 1]}},
        "if": {"properties": {"flag": {"const": 1}}},
        "then": {"required": ["n"]},
    }
    rewritten = with_conditionals_as_choices(schema)
    for value in ({"flag": True}, {"flag": 1}, {"flag": 1, "n": 0}):
        assert Draft7Validator(schema).is_valid(value) == Draft7Validator(rewritten).is_valid(value)


@pytest.mark.parametrize(
    ("schema", "accepted", "refused"),
    [
        (FORM_ITEM, '{"type": "markdown", "attributes": 1}', '{"type": "markdown"}'),
        (FORM_ITEM, '{"type": "input", "attributes": 1, "id": "ab"}', '{"type": "input", "attributes": 1, "id": "a"}'),
        (ACTION, '{"outputs": {}, "runs": {"using": "x"}}', '{"outputs": [], "runs": {"using": "x"}}'),
        (UPDATE, '{"schedule": "daily"}', "{}"),
    ],
)
def test_not_strict_the_conditionals_are_enforced_token_by_token(
    compiler: ConstraintCompiler, schema: dict[str, Any], accepted: str, refused: str
) -> None:
    """What llguidance ignored before (each refused text was allowed: its `if` was not enforced)."""
    for text, allowed in ((accepted, True), (refused, False)):
        assert enforces(compiler, schema, text) == allowed, text
