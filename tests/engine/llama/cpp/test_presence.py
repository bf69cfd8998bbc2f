"""Presence-only `oneOf` / `not` on objects rewritten exactly (jsonschema decides every generated value the
same way before and after) and enforced token by token."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.cpp.presence import with_presence_exact
from tests.engine.llama.cpp.conftest import enforces

PROPS = {name: {"type": "integer"} for name in "abc"}
OBJECT = {"type": "object", "properties": PROPS, "additionalProperties": False}
# GitHub's composite action step: `uses`, or `run` with `shell`, never both
STEP = OBJECT | {
    "oneOf": [
        {"anyOf": [{"not": {"properties": {"a": True}, "required": ["a"]}}, {"not": {"required": ["b"]}}]},
        {"not": {"properties": {"c": True}, "required": ["c"]}},
    ]
}
EXCLUSIVE = OBJECT | {"oneOf": [{"required": ["a"]}, {"required": ["b"]}, {"required": ["c"], "title": "c"}]}
NOT_BOTH = OBJECT | {"not": {"required": ["a", "b"]}, "required": ["c"]}
ABSENT = OBJECT | {"oneOf": [{"properties": {"a": False}}, {"allOf": [{"required": ["b"]}, {"required": ["c"]}]}]}
# CircleCI's job: an executor, or exactly one of machine / docker / macos (each branch saying `type` again)
JOB = OBJECT | {
    "anyOf": [
        {"type": "object", "required": ["a"]},
        {"oneOf": [{"type": "object", "required": [name]} for name in "bc"]},
    ]
}
IN_ALL_OF = OBJECT | {"allOf": [{"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, {"required": ["c"]}]}
# a branch's property schema of annotations alone, and a vendor's key, say nothing of validity
ANNOTATED = OBJECT | {
    "oneOf": [{"properties": {"a": {"description": "a"}}, "required": ["a"], "x-note": 1}, {"required": ["b"]}]
}
SCHEMAS = [STEP, EXCLUSIVE, NOT_BOTH, ABSENT, JOB, IN_ALL_OF, ANNOTATED]


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.sampled_from("abc"), st.integers(0, 1)))
def test_the_rewrite_decides_every_object_as_the_schema_does(value: dict[str, int]) -> None:
    for schema in SCHEMAS:
        rewritten = with_presence_exact(schema)
        assert rewritten is not schema and "oneOf" not in str(rewritten) and "'not'" not in str(rewritten)
        assert Draft202012Validator(schema).is_valid(value) == Draft202012Validator(rewritten).is_valid(value)


def test_only_objects_and_only_presence() -> None:
    untyped = {"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}  # a string satisfies both branches
    other = OBJECT | {"oneOf": [{"required": ["a"]}, {"properties": {"b": {"minimum": 1}}}]}
    enforced_as_is = OBJECT | {"anyOf": [{"required": ["a"]}, {"properties": {"b": False}}]}
    for schema in (untyped, other, {"type": "object", "not": {"type": "string"}}, enforced_as_is):
        assert with_presence_exact(schema) is schema
    nested = {"type": "array", "items": EXCLUSIVE}
    assert "oneOf" not in with_presence_exact(nested)["items"]
    # a `then` (or a branch) of an object's schema is about the same object; a property's schema is not
    exclusive = {"oneOf": [{"required": ["b"]}, {"required": ["c"]}]}
    inherited = {"type": "object", "if": {"required": ["a"]}, "then": exclusive}
    assert "oneOf" not in str(with_presence_exact(inherited))
    for value in ({"a": 1, "b": 1}, {"a": 1, "b": 1, "c": 1}, {"b": 1, "c": 1}, {"a": 1}):
        assert Draft202012Validator(inherited).is_valid(value) == Draft202012Validator(
            with_presence_exact(inherited)
        ).is_valid(value)
    inner = {"type": "object", "properties": {"x": exclusive}}
    assert with_presence_exact(inner) is inner  # x may be a string, where both branches hold


@pytest.mark.parametrize(
    ("schema", "accepted", "refused"),
    [
        (EXCLUSIVE, '{"b": 1}', '{"a": 1, "b": 1}'),
        (NOT_BOTH, '{"a": 1, "c": 1}', '{"a": 1, "b": 1, "c": 1}'),
        (STEP, '{"a": 1, "b": 1}', '{"b": 1}'),
        (JOB, '{"a": 1, "b": 1, "c": 1}', '{"b": 1, "c": 1}'),
        (IN_ALL_OF, '{"b": 1, "c": 1}', '{"a": 1, "b": 1, "c": 1}'),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_the_exclusive_choice_is_enforced_token_by_token(
    compiler: ConstraintCompiler, schema: dict[str, Any], accepted: str, refused: str, strict: bool
) -> None:
    """Not strict, `oneOf` was `anyOf` (both properties could come out) and `not` was not enforced; strict
    refused both keywords."""
    for text, allowed in ((accepted, True), (refused, False)):
        assert enforces(compiler, schema, text, strict=strict) == allowed, text


def test_nested_exclusive_choices_do_not_explode() -> None:
    """Each oneOf level repeats its branches once per branch: 8 levels of 8 would be 8^8 tests."""
    inner: dict[str, Any] = {"required": ["a"]}
    for level in range(8):
        inner = {"oneOf": [inner, *({"required": [f"p{level}_{i}"]} for i in range(7))]}
    schema = {"type": "object", **inner}
    rewritten = with_presence_exact(schema)  # the inner levels exactly, the outer ones left to the output check
    assert len(json.dumps(rewritten)) < 20 * len(json.dumps(schema))
    assert "oneOf" in rewritten
    shallow = {"type": "object", "oneOf": [{"oneOf": [{"required": ["a"]}, {"required": ["b"]}]}, {"required": ["c"]}]}
    assert "oneOf" not in with_presence_exact(shallow)
