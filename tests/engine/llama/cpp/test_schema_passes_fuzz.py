"""Whatever schema-like value arrives, the passes before llguidance (unused definitions, presence,
conditionals, `$ref` siblings, object branches) and the compile end in a matcher or a request error, never
another exception (an outside fuzzer sends such values; a 500 would be a bug)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.cpp.object_branches import with_properties_in_branches, with_values_per_branch

NAMES = st.sampled_from(["a", "b", "type", "if", "$ref", "enum", "x y"])
REFS = st.sampled_from(["#", "#/definitions/a", "#/$defs/b", "#/definitions", "#a", "other.json", "http://[", "#/%ZZ"])
STRINGS = st.sampled_from(["object", "string", "integer", "a", "", "^a$"])
LEAVES = st.none() | st.booleans() | st.integers(-2, 2) | STRINGS


def schemas() -> st.SearchStrategy[Any]:
    def grow(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        keyword = st.sampled_from(
            [
                *("if", "then", "else", "not", "items", "additionalProperties", "const", "default", "$id"),
                *("$anchor", "pattern", "minLength"),
            ]
        )
        lists = st.sampled_from(["oneOf", "anyOf", "allOf", "enum", "required"])
        maps = st.sampled_from(["properties", "definitions", "$defs", "patternProperties"])
        return st.dictionaries(
            keyword | lists | maps | st.just("$ref") | st.just("type"),
            inner | REFS | st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
            max_size=5,
        )

    return st.recursive(LEAVES | st.builds(dict), grow, max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=st.dictionaries(st.sampled_from(["type", "definitions", "oneOf", "if", "$ref", "not"]), schemas()))
def test_any_schema_ends_in_a_matcher_or_a_request_error(compiler: ConstraintCompiler, schema: dict[str, Any]) -> None:
    schema = {"type": "object", **schema}
    for strict in (True, False):
        try:
            compiler.matcher(json_schema=schema, grammar=None, strict=strict)
        except InvalidRequest:
            pass


@settings(max_examples=300, deadline=None)
@given(schema=schemas(), meta=st.sampled_from([None, "http://json-schema.org/draft-04/schema#", 3]))
def test_the_object_branch_rewrites_take_any_schema(schema: Any, meta: Any) -> None:
    """The rewrite llguidance's size limit calls for is reached by few schemas through the compile: both
    passes on their own, on schema-like values whose keyword values may be of any type."""
    if isinstance(schema, dict):
        with_properties_in_branches(with_values_per_branch(schema, meta))
