"""Definitions nothing refers to are dropped before compiling (they cannot change which values are valid),
and only where every reference can be followed."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft7Validator

from engine.llama.cpp.unused_definitions import without_unused_definitions

K8S = {"$ref": "https://example.com/k8s.json#/definitions/Pod"}


def test_only_the_definitions_reached_from_the_root_are_kept() -> None:
    schema = {
        "$id": "https://example.com/ci.json",
        "type": "object",
        "properties": {
            "steps": {"$ref": "#/definitions/steps"},
            "when": {"$ref": "#/definitions/a~1b"},
            "default": {"$ref": "#/definitions/name"},  # a property called "default": a schema, not data
        },
        "definitions": {
            "steps": {"type": "array", "items": {"$ref": "https://example.com/ci.json#/definitions/step"}},
            "step": {"anyOf": [{"$ref": "#/definitions/step"}, {"type": "string"}]},
            "name": {"type": "string", "minLength": 1},
            "a/b": {"const": 1},
            "pod": K8S,  # unused: refers to another document
            "example": {"examples": [{"$ref": "#/definitions/pod"}]},  # unused; an example is no reference
        },
    }
    pruned = without_unused_definitions(schema)
    assert sorted(pruned["definitions"]) == ["a/b", "name", "step", "steps"]
    assert {k: v for k, v in pruned.items() if k != "definitions"} == {
        k: v for k, v in schema.items() if k != "definitions"
    }


def test_percent_encoded_and_dollar_defs_references_are_followed() -> None:
    schema = {"$ref": "#/%24defs/my%20item", "$defs": {"my item": {"type": "integer"}, "other": K8S}}
    assert without_unused_definitions(schema)["$defs"] == {"my item": {"type": "integer"}}


def test_a_schema_whose_references_cannot_all_be_followed_is_left_as_it_is() -> None:
    anchored = {"$ref": "#item", "$defs": {"item": {"$anchor": "item", "type": "string"}, "other": K8S}}
    nested_id = {"$ref": "item.json", "$defs": {"item": {"$id": "item.json", "type": "string"}, "other": K8S}}
    relative = {"$id": "https://example.com/a/ci.json", "$ref": "ci.json#/$defs/x", "$defs": {"x": {}, "y": K8S}}
    whole_bag = {"$ref": "#/$defs", "$defs": {"x": {}, "y": K8S}}
    no_uri = {"$id": "http://[", "$ref": "x.json", "$defs": {"x": {}, "y": K8S}}  # urllib: ValueError
    for schema in (anchored, nested_id, whole_bag, no_uri):
        assert without_unused_definitions(schema) is schema
    assert without_unused_definitions(relative)["$defs"] == {"x": {}}  # resolves to this document


def test_nothing_unused_gives_the_same_object() -> None:
    schema: dict[str, Any] = {"$ref": "#/definitions/x", "definitions": {"x": {"$ref": "#"}}}
    assert without_unused_definitions(schema) is schema
    assert without_unused_definitions({"type": "string"}) == {"type": "string"}


def test_pruning_keeps_what_a_validator_decides() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "oneOf": [{"$ref": "#/definitions/env"}, {"type": "null"}],
        "definitions": {
            "env": {"type": "object", "additionalProperties": {"$ref": "#/definitions/value"}},
            "value": {"anyOf": [{"type": "string"}, {"$ref": "#/definitions/secret"}]},
            "secret": {"type": "object", "required": ["from_secret"]},
            "kube": K8S,
        },
    }
    pruned = without_unused_definitions(schema)
    assert "kube" not in pruned["definitions"]
    for value in (None, {}, {"a": "x"}, {"a": {"from_secret": "s"}}, {"a": {}}, {"a": 1}, [], "x"):
        assert Draft7Validator(pruned).is_valid(value) == Draft7Validator(schema).is_valid(value), value
