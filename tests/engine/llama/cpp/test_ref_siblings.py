"""`$ref` siblings dropped only as far as validation ignores them, and only for llguidance's circular error."""

from __future__ import annotations

from jsonschema import Draft7Validator, Draft202012Validator

from engine.llama.cpp.ref_siblings import exactly_relaxed

CIRCULAR = "circular references with sibling keys are not supported: json-schema:///#/definitions/a"
DRAFT7 = "http://json-schema.org/draft-07/schema#"


def test_annotations_go_first_then_in_old_drafts_every_sibling() -> None:
    schema = {
        "properties": {
            "markdownDescription": {"$ref": "#/definitions/a", "title": "t", "minimum": 1},  # a property's name
        },
        "definitions": {"a": {"type": "integer"}},
    }
    first = exactly_relaxed(schema, CIRCULAR, DRAFT7)
    assert first is not None
    assert first["properties"] == {"markdownDescription": {"$ref": "#/definitions/a", "minimum": 1}}
    second = exactly_relaxed(first, CIRCULAR, DRAFT7)
    assert second is not None and second["properties"]["markdownDescription"] == {"$ref": "#/definitions/a"}
    assert exactly_relaxed(second, CIRCULAR, DRAFT7) is None  # nothing left to drop: the caller relaxes further
    # 2020-12 applies `minimum` beside `$ref`: it stays
    assert exactly_relaxed(first, CIRCULAR, None) is None
    assert exactly_relaxed(schema, "some other error", DRAFT7) is None
    for value in ({"markdownDescription": 0}, {"markdownDescription": 2}, {"markdownDescription": "x"}):
        assert Draft7Validator(schema).is_valid(value) == Draft7Validator(second).is_valid(value)
        assert Draft202012Validator(schema).is_valid(value) == Draft202012Validator(first).is_valid(value)
