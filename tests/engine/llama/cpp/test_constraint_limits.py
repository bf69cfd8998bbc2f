"""Hostile constraints (issue 20): the compiled-grammar cache is bounded by bytes, not only by count; a
pattern that compiles but cannot run is refused when the request is prepared; a constraint that fails
mid-generation is the request's own short error."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from engine.errors import ConstraintFailed, InvalidRequest
from engine.llama.cpp.constraints import CACHED_GRAMMAR_BYTES, CACHED_OUTCOME_BYTES, ConstraintCompiler, TokenMask
from engine.llama.cpp.sized_cache import SizedCache
from tests.engine.llama.cpp.conftest import enforces


def test_the_grammar_cache_is_bounded_by_bytes(compiler: ConstraintCompiler, monkeypatch: pytest.MonkeyPatch) -> None:
    assert CACHED_GRAMMAR_BYTES + CACHED_OUTCOME_BYTES <= 64 << 20
    monkeypatch.setattr(compiler._grammars, "max_bytes", 1 << 20)
    words = [f"word{i:05d}-" + "x" * 90 for i in range(1000)]  # ~100 kB of schema text each
    for i in range(24):
        compiler.matcher(json_schema={"enum": [f"{i}-{w}" for w in words]}, grammar=None)
        assert compiler._grammars.bytes <= 1 << 20
    assert 0 < len(compiler._grammars) < 24


def test_sized_cache_evicts_least_recently_used_and_keeps_no_oversized_value() -> None:
    cache: SizedCache[str, str] = SizedCache(max_entries=3, max_bytes=10, size_of=lambda k, v: len(v))
    for key in "abc":
        cache.get_or_make(key, lambda: "xxx")
    cache.get_or_make("a", lambda: "never made")  # a hit: "a" becomes the most recent
    cache.get_or_make("d", lambda: "yyy")  # 12 bytes > 10: the least recent ("b") goes
    assert cache.get_or_make("a", lambda: "made again") == "xxx"
    assert cache.get_or_make("b", lambda: "made again") == "made again"
    assert cache.get_or_make("big", lambda: "z" * 11) == "z" * 11 and len(cache) <= 3 and cache.bytes <= 10
    assert cache.get_or_make("big", lambda: "made again") == "made again"  # never kept
    with pytest.raises(ValueError):
        cache.get_or_make("bad", lambda: (_ for _ in ()).throw(ValueError("no")))
    assert cache.get_or_make("bad", lambda: "fine") == "fine"  # errors are not cached


@pytest.mark.parametrize("pattern", ["^a{99999999}$", "^b{5}a{99999999}$"])
def test_a_pattern_that_cannot_run_is_refused_when_prepared(compiler: ConstraintCompiler, pattern: str) -> None:
    with pytest.raises(InvalidRequest, match=r"json_schema.*too many expressions") as caught:
        compiler.matcher(json_schema={"type": "string", "pattern": pattern}, grammar=None)
    assert len(str(caught.value)) < 200 and "\n" not in str(caught.value)


def test_a_constraint_failing_mid_generation_is_the_requests_own_short_error(compiler: ConstraintCompiler) -> None:
    matcher = compiler.matcher(json_schema={"type": "integer"}, grammar=None)
    assert matcher is not None
    mask = TokenMask(matcher, n_vocab=49152)
    letter = compiler._lltokenizer().tokenize_str("x")[0]  # an integer cannot start with it
    with pytest.raises(ConstraintFailed) as caught:
        mask.accept(letter)
    message = str(caught.value)
    assert message.startswith("the output constraint") and len(message) < 400 and "\n" not in message, message


def test_a_schema_that_makes_llguidance_panic_is_a_clear_error(compiler: ConstraintCompiler) -> None:
    """llguidance formats this `$ref` error by slicing inside a UTF-8 character and panics: pyo3's
    PanicException passes `except Exception` (the OpenAI fuzz found it as a bare 500)."""
    keys = {"": -(10**16), "000\u001f\u001f\u0080": None, "00\u001f\u001f\\\u0080\u0080": None}
    schema = {"type": None, "$ref": {"": None, "00\u001f\r\u0007\u0080\u0080": keys}}
    with pytest.raises(InvalidRequest, match="llguidance panicked"):
        compiler.matcher(json_schema=schema, grammar=None)
    assert compiler.matcher(json_schema={"type": "integer"}, grammar=None) is not None  # and it compiles on


@pytest.mark.parametrize(
    "meta",
    [
        "http://json-schema.org/schema",
        "https://json-schema.org/draft/2020-12/schema",
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-04/schema#",
    ],
)
def test_json_schema_org_meta_schema_uris_are_accepted(compiler: ConstraintCompiler, meta: str) -> None:
    """The generic URI was refused: llguidance resolved it as a reference it could not fetch."""
    assert compiler.matcher(json_schema={"$schema": meta, "type": "object"}, grammar=None) is not None


@pytest.mark.parametrize(
    ("schema", "words", "not_words"),
    [
        # llguidance's reason spans lines: "regex parse error:", the pattern, a caret line, "error: why"
        ({"type": "string", "pattern": "(?<=a)b"}, ["look-around", "(?<=a)b"], []),
        # it suggests an llguidance option the caller cannot set
        (
            {"oneOf": [{"type": "object", "properties": {"a": {}}}, {"type": "object", "properties": {"b": {}}}]},
            ["`oneOf` is not supported", "anyOf"],
            ["coerce_one_of"],
        ),
    ],
)
def test_refusals_give_the_whole_reason_on_one_line(
    compiler: ConstraintCompiler, schema: dict, words: list[str], not_words: list[str]
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        compiler.matcher(json_schema=schema, grammar=None)
    message = str(caught.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not any(w in message for w in not_words), message


def test_a_reference_to_another_document_is_named(compiler: ConstraintCompiler) -> None:
    with pytest.raises(
        InvalidRequest, match=r"refers to 'https://example\.com/k8s\.json', which this server does not fetch"
    ):
        compiler.matcher(json_schema={"$ref": "https://example.com/k8s.json"}, grammar=None, strict=False)


def test_a_reference_to_another_document_in_a_definition_nothing_uses_is_no_refusal(
    compiler: ConstraintCompiler,
) -> None:
    """SchemaStore's Drone CI schema: its Kubernetes definitions refer to another document; a schema made of
    its other definitions was refused although nothing in it reached them."""
    defs = {"name": {"type": "string", "minLength": 1}, "pod": {"$ref": "https://example.com/k8s.json"}}
    uses_name = {"type": "array", "items": {"$ref": "#/definitions/name"}, "definitions": defs}
    for strict in (True, False):
        matcher = compiler.matcher(json_schema=uses_name, grammar=None, strict=strict)
        assert matcher is not None
        assert not matcher.consume_tokens(compiler._lltokenizer().tokenize_str('[""'))  # minLength enforced
    with pytest.raises(InvalidRequest, match="which this server does not fetch"):
        compiler.matcher(json_schema=uses_name | {"items": {"$ref": "#/definitions/pod"}}, grammar=None, strict=False)


def test_not_strict_falls_back_to_what_can_be_enforced(compiler: ConstraintCompiler) -> None:
    """A look-around regex cannot be compiled: not strict, the schema is enforced without it (the output is
    checked against it after); strict, it is refused."""
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "(?<=a)b"}}, "required": ["id"]}
    assert compiler.matcher(json_schema=schema, grammar=None, strict=False) is not None
    with pytest.raises(InvalidRequest, match="look-around"):
        compiler.matcher(json_schema=schema, grammar=None, strict=True)


def test_a_sub_schema_llguidance_cannot_handle_is_relaxed_alone(compiler: ConstraintCompiler) -> None:
    """A circular reference with a sibling that validation uses (2020-12 applies `$ref`'s siblings): not
    strict, only that definition is relaxed to {} and the rest (here `required`) stays enforced token by
    token."""
    schema = {
        "type": "object",
        "required": ["version"],
        "properties": {"version": {"type": "integer"}, "when": {"$ref": "#/definitions/logic"}},
        "definitions": {"logic": {"oneOf": [
            {"type": "boolean"},
            {"type": "object", "additionalProperties": False,
             "properties": {"not": {"$ref": "#/definitions/logic", "type": "object"}}},  # a sibling of the $ref
        ]}},
    }  # fmt: skip
    with pytest.raises(InvalidRequest, match="circular"):  # what llguidance cannot do with it
        compiler.matcher(json_schema=schema, grammar=None, strict=True)
    matcher = compiler.matcher(json_schema=schema, grammar=None, strict=False)
    assert matcher is not None
    assert not matcher.consume_tokens(compiler._lltokenizer().tokenize_str('{"when": {}}'))  # version is required


LOGIC = {
    "type": "object",
    "properties": {"when": {"$ref": "#/definitions/logic"}},
    "additionalProperties": False,
    "definitions": {"logic": {"anyOf": [
        {"type": "boolean"},
        {"type": "object", "additionalProperties": False, "properties": {"not": {"$ref": "#/definitions/logic"}}},
    ]}},
}  # fmt: skip


@pytest.mark.parametrize(
    ("sibling", "meta"),
    [
        ({"markdownDescription": "Logical not"}, None),  # SchemaStore's CircleCI: an annotation, in any draft
        ({"type": "object"}, "http://json-schema.org/draft-07/schema#"),  # before 2019-09 `$ref` stands alone
    ],
)
def test_siblings_validation_ignores_are_dropped_and_the_circular_reference_enforced(
    compiler: ConstraintCompiler, sibling: dict[str, Any], meta: str | None
) -> None:
    """Before, the whole definition was relaxed to {} (anything) and strict refused the schema; dropping
    what validation ignores keeps its meaning and llguidance compiles the circular reference."""
    logic = LOGIC["definitions"]["logic"]["anyOf"]  # type: ignore[index]
    schema = copy.deepcopy(LOGIC) | ({"$schema": meta} if meta else {})
    schema["definitions"]["logic"]["anyOf"][1]["properties"]["not"] |= sibling
    assert logic[1]["properties"]["not"] == {"$ref": "#/definitions/logic"}  # the constant is untouched
    for strict in (True, False):
        for text, allowed in (('{"when": {"not": {"not": true}}}', True), ('{"when": {"not": 3}}', False)):
            assert enforces(compiler, schema, text, strict=strict) == allowed, (strict, text)


def test_a_schema_seen_before_skips_the_passes_and_a_refusal_is_remembered(
    compiler: ConstraintCompiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The passes before llguidance walk the whole schema (a 1.4 MB one took ~0.5 s a call); a schema
    seen before goes straight to its compiled grammar, and one refused before is refused again at once."""
    accepted = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    refused = {"type": "integer", "minimum": 5, "maximum": 3}
    assert compiler.matcher(json_schema=accepted, grammar=None, strict=False) is not None
    with pytest.raises(InvalidRequest) as first:
        compiler.matcher(json_schema=refused, grammar=None, strict=False)

    def walked(*_: object) -> str:
        raise AssertionError("the schema was prepared again")

    monkeypatch.setattr(compiler, "_schema_text", walked)
    assert compiler.matcher(json_schema=accepted, grammar=None, strict=False) is not None
    with pytest.raises(InvalidRequest) as again:
        compiler.matcher(json_schema=refused, grammar=None, strict=False)
    assert str(again.value) == str(first.value)
    with pytest.raises(AssertionError, match="prepared again"):  # strict is its own entry
        compiler.matcher(json_schema=accepted, grammar=None, strict=True)


def test_a_rewrite_that_does_not_compile_gives_way_to_the_schema_as_sent(
    compiler: ConstraintCompiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llguidance may find a rewrite's intersections too large (Dependabot's `if not` did): not strict,
    the schema as sent is compiled instead, not a looser fallback."""
    import engine.llama.cpp.constraints as constraints

    broken = {"type": "object", "allOf": [{"$ref": "#/definitions/missing"}]}
    monkeypatch.setattr(constraints, "with_presence_exact", lambda schema: broken)
    schema = {"type": "object", "properties": {"gives_way": {"type": "integer"}}, "required": ["gives_way"]}
    for text, allowed in (('{"gives_way": 1}', True), ("{}", False)):
        assert enforces(compiler, schema, text) == allowed, text
