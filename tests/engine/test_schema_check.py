"""The check of a json_schema request's finished output against the whole schema (engine/schema_check.py)."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.schema_check import output_problem, schema_validator


@pytest.mark.parametrize(
    ("schema", "text", "keyword"),
    [
        ({"type": "array", "uniqueItems": True}, "[1, 1]", "`uniqueItems` at $"),
        ({"type": "string", "not": {"type": "string"}}, '"a"', "`not` at $"),
        ({"if": {"required": ["a"]}, "then": {"required": ["b"]}}, '{"a": 1}', "`required`"),
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "3", "`oneOf` at $"),
        ({"type": "string", "format": "email"}, '"not an email"', "`format`"),
        ({"type": "object"}, '{"a": ', "not a complete JSON value"),
    ],
)  # fmt: skip
def test_a_broken_keyword_is_named(schema: dict, text: str, keyword: str) -> None:
    problem = output_problem(schema, text)
    assert problem is not None and keyword in problem and "\n" not in problem


def test_valid_output_has_no_problem_under_any_draft() -> None:
    assert output_problem({"type": "array", "uniqueItems": True}, "[1, 2]") is None
    for meta in ("http://json-schema.org/schema", "http://json-schema.org/draft-04/schema#", "https://example.com/s"):
        assert output_problem({"$schema": meta, "type": "integer"}, "3") is None
    # draft 4's boolean exclusiveMinimum is read as draft 4 reads it
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "minimum": 3, "exclusiveMinimum": True}
    assert "exclusiveMinimum" in (output_problem(draft4, "3") or "") or "minimum" in (output_problem(draft4, "3") or "")


def test_schemas_are_checked_but_not_their_regexes_by_pythons_re() -> None:
    schema_validator({"type": "string", "pattern": "^[^\\s\\p{Cc}]+$"})  # ECMA-262: accepted
    with pytest.raises(InvalidRequest, match=r"not a valid JSON Schema.*strng"):
        schema_validator({"type": "strng"})
    problem = output_problem({"type": "string", "pattern": "^\\p{Cc}$"}, '"a"')
    assert problem is not None and problem.startswith("the output could not be checked")  # an error, not a pass


def test_a_reference_to_another_document_is_not_fetched() -> None:
    problem = output_problem({"$ref": "https://example.com/other.json"}, "1")
    assert problem is not None and "does not fetch" in problem
