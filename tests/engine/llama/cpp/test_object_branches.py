"""An object's enumerated property narrowed per branch, and its keywords copied into its branches: exact
(jsonschema decides every generated value the same way before and after), left alone where they would not
be, and what makes SchemaStore's Azure Pipelines compile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import check_jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator, Draft202012Validator

from engine.errors import InvalidRequest
from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.cpp.object_branches import _literal, with_properties_in_branches, with_values_per_branch
from tests.engine.llama.cpp.conftest import enforces

VALUES = ["a", "b", "ab", 1, 1.5, True, None]
ENUMS = st.lists(st.sampled_from(VALUES), min_size=1, max_size=4)
OWN = st.one_of(  # the object's schema of `k`: values only
    ENUMS.map(lambda values: {"enum": values, "description": "k"}),
    st.sampled_from(VALUES).map(lambda value: {"const": value}),
    ENUMS.map(lambda values: {"anyOf": [{"const": value, "title": "one"} for value in values]}),
)
IN_BRANCH = st.one_of(  # a branch's schema of `k`: decidable here, or not
    st.sampled_from(
        [
            {"pattern": "^a$"},
            {"pattern": "^a\\.b$"},
            {"type": "string"},
            {"type": "integer"},
            {"minLength": 2},
            {"type": "string", "maxLength": 1},
            {"pattern": "^a.*$"},
            {"not": {"const": "a"}},
            True,
            False,
        ]
    ),
    ENUMS.map(lambda values: {"enum": values}),
)
BRANCHES = st.lists(
    st.fixed_dictionaries(
        {
            "properties": st.fixed_dictionaries(
                {},
                optional={
                    "k": IN_BRANCH,
                    "x": st.sampled_from([{"type": "integer"}, {"maximum": 1}, {"exclusiveMaximum": 2}, {"items": {}}]),
                },
            )
        },
        optional={
            "required": st.lists(st.sampled_from("kx"), max_size=2, unique=True),
            "title": st.just("a task"),
            "additionalProperties": st.booleans(),
        },
    ),
    min_size=2,
    max_size=4,
)
SCHEMAS = st.builds(
    lambda own, x, choice, branches, extra: {
        "properties": {"k": own, "x": x},
        choice: branches,
        **extra,
    },
    OWN,
    st.sampled_from([{"type": ["integer", "string"]}, {"type": "string"}, {"minimum": 2}, {"maximum": 1.5}]),
    st.sampled_from(["anyOf", "oneOf"]),
    BRANCHES,
    st.fixed_dictionaries(
        {}, optional={"type": st.just("object"), "additionalProperties": st.booleans(), "required": st.just(["k"])}
    ),
)
# every combination of `k` and `x` (absent or one of these), a stray property, and values that are no objects
_ABSENT = object()
INSTANCES = [
    {name: value for name, value in (("k", k), ("x", x)) if value is not _ABSENT}
    for k in [_ABSENT, *VALUES, "a.b", 2]
    for x in [_ABSENT, 2, 3, 1.5, "s", []]
] + [{"y": 1}, {"k": "a", "y": 1}, "a", 3, None, []]


@settings(max_examples=300, deadline=None)
@given(schema=SCHEMAS)
def test_the_rewrites_decide_every_value_as_the_schema_does(schema: dict[str, Any]) -> None:
    narrowed = with_values_per_branch(schema)
    before = Draft202012Validator(schema)
    for rewritten in (narrowed, with_properties_in_branches(schema), with_properties_in_branches(narrowed)):
        Draft202012Validator.check_schema(rewritten)
        after = Draft202012Validator(rewritten)
        for instance in INSTANCES:
            assert before.is_valid(instance) == after.is_valid(instance), (schema, rewritten, instance)


TASKS = {
    "type": "object",
    "properties": {
        "task": {"anyOf": [{"enum": ["PowerShell@2"]}, {"enum": ["Bash@3"]}, {"enum": ["Npm@1"]}]},
        "inputs": {"type": "object"},
        "name": {"type": "string"},
    },
    "additionalProperties": False,
    "anyOf": [
        {"properties": {"task": {"pattern": "^PowerShell@2$"}, "inputs": {"properties": {"script": {}}}}},
        {"properties": {"task": {"pattern": "^Bash@3$"}}, "required": ["task"]},
    ],
}


def test_what_each_rewrite_makes_of_azure_s_form() -> None:
    narrowed = with_values_per_branch(TASKS)
    assert narrowed["properties"]["task"] == {}
    assert [b["properties"]["task"] for b in narrowed["anyOf"]] == [{"enum": ["PowerShell@2"]}, {"enum": ["Bash@3"]}]
    distributed = with_properties_in_branches(narrowed)
    first = distributed["anyOf"][0]
    assert "properties" not in distributed and first["additionalProperties"] is False
    # the object's `inputs` ({type: object}) and the branch's merge into one schema: no allOf to intersect
    assert first["properties"]["inputs"] == {"type": "object", "properties": {"script": {}}}
    assert first["properties"]["name"] == {"type": "string"}


@pytest.mark.parametrize(
    "schema",
    [
        TASKS | {"anyOf": [{"properties": {"task": {"pattern": "^Power.*$"}}}, TASKS["anyOf"][1]]},  # a real regex
        TASKS | {"$defs": {"t": {"type": "string"}}, "not": {"$ref": "#/properties/task"}},  # a pointer inside
        TASKS | {"anyOf": [{"$ref": "#/$defs/t"}, TASKS["anyOf"][1]], "$defs": {"t": {}}},  # a branch by reference
        TASKS | {"anyOf": [{"properties": {"name": {}}, "additionalProperties": False}, TASKS["anyOf"][1]]},
    ],
    ids=["regex", "deep-pointer", "branch-ref", "branch-closed"],
)
def test_values_are_not_narrowed_where_that_would_not_be_exact(schema: dict[str, Any]) -> None:
    assert with_values_per_branch(schema) is schema


def test_not_copied_where_merging_would_change_a_keyword() -> None:
    narrowed = with_values_per_branch(TASKS)
    # a branch naming a property the object's additionalProperties rejects would let it through once merged
    extra = narrowed | {"anyOf": [*narrowed["anyOf"], {"properties": {"other": {}}}]}
    unevaluated = narrowed | {"unevaluatedProperties": False}
    by_ref = narrowed | {"$ref": "#/$defs/t", "$defs": {"t": {}}}
    branch_keyword = narrowed | {"anyOf": [*narrowed["anyOf"], {"minProperties": 1}]}
    draft_3 = narrowed | {"required": True}  # draft-03's `required` is a boolean
    for schema in (extra, unevaluated, by_ref, branch_keyword, draft_3):
        assert with_properties_in_branches(schema) is schema
    # the root's definitions and $id stay at the root, where references find them
    rooted = narrowed | {"$id": "https://example.com/s", "$defs": {"t": {"type": "string"}}}
    distributed = with_properties_in_branches(rooted)
    assert distributed["$defs"] == rooted["$defs"] and distributed["$id"] == rooted["$id"]
    assert all("$defs" not in branch and "$id" not in branch for branch in distributed["anyOf"])


def test_const_before_draft_06_is_no_keyword() -> None:
    schema = {"properties": {"k": {"const": "a"}}, "anyOf": [{"properties": {"k": {"type": "integer"}}}] * 2}
    assert with_values_per_branch(schema, "http://json-schema.org/draft-04/schema#") is schema
    assert Draft4Validator(schema).is_valid({"k": 3})  # const ignored: narrowing it to nothing would be wrong


def test_a_literal_pattern_is_decided_as_ecma_262_does() -> None:
    assert _literal("^a\\.b@2$") == "a.b@2"
    assert _literal("^$") == ""
    assert _literal("^refs/heads$") == "refs/heads"
    for regex in ("^a\\d$", "^a.b$", "a", "^a", "^(a|b)$", "^a\\$"):
        assert _literal(regex) is None
    # ECMA-262's `$` is the string's end (Python's re also takes a final newline before it)
    schema = {"properties": {"k": {"enum": ["a", "a\n"]}}, "anyOf": [{"properties": {"k": {"pattern": "^a$"}}}] * 2}
    assert [b["properties"]["k"]["enum"] for b in with_values_per_branch(schema)["anyOf"]] == [["a"], ["a"]]


AZURE = Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "azure-pipelines.json"


def test_azure_pipelines_compiles_and_is_enforced(compiler: ConstraintCompiler) -> None:
    """SchemaStore's Azure Pipelines (259 tasks) was refused as past llguidance's size limit."""
    azure = json.loads(AZURE.read_text())
    step = '{"steps": [{"task": "PowerShell@2", "inputs": {"targetType": "inline", "script": "ls"}}]}'
    assert enforces(compiler, azure, step)
    # PowerShell@1's input under PowerShell@2: the task's inputs are enforced per task
    assert not enforces(compiler, azure, '{"steps": [{"task": "PowerShell@2", "inputs": {"scriptType": "x"}}]}')
    assert not enforces(compiler, azure, '{"steps": [{"task": "NoSuchTask@1"}]}')
    with pytest.raises(InvalidRequest, match="oneOf"):  # strict: refused by name, not for its size
        compiler.matcher(json_schema=azure, grammar=None, strict=True)
