"""Constrained output: a JSON Schema or a grammar (GBNF or Lark) becomes a token mask at every step.

llguidance does the work: it compiles the schema or grammar against the model's vocabulary and, per
token, computes the set of allowed tokens in ~0.2 ms (measured here with 8 sequences of SmolLM2's
49k-token vocabulary: 1.3 ms a step, against 30 ms for llama.cpp's own grammar sampler, which checks
every candidate token). The allowed set is applied to the logits in place before the request's
ordinary sampling (engine/llama/cpp/sampler.py), so temperature, top-p, penalties and seeds behave as without a schema.

Compiling (schema → grammar) happens in preparation, off the decode thread, once per distinct schema
(keyed by its JSON text: property order is kept, since the output follows it), in a cache bounded by
count and by bytes. Compiling also takes a first step, on a copy of a matcher: llguidance builds its
lexer lazily, so a hostile pattern (`a{99999999}`) compiles and fails only at its first token. Such
failures are the request's own 400 in preparation, and llguidance's terse errors (no state dumps) are
what reaches the caller if one happens later.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import llama_cpp
import llguidance
import llguidance.llamacpp
import numpy as np

from engine.errors import ConstraintFailed, InvalidRequest
from engine.llama.cpp.conditionals import with_conditionals_as_choices
from engine.llama.cpp.object_branches import with_properties_in_branches, with_values_per_branch
from engine.llama.cpp.presence import with_presence_exact
from engine.llama.cpp.ref_siblings import exactly_relaxed
from engine.llama.cpp.restated_properties import without_restated_properties
from engine.llama.cpp.schema_keywords import map_schemas, pointer_tokens
from engine.llama.cpp.sized_cache import SizedCache
from engine.llama.cpp.unused_definitions import without_unused_definitions

CACHED_GRAMMARS = 256
# what the caches keep, together 64 MiB: the schema texts compiled and their grammars; schemas as sent and
# the text chosen for each (or why it was refused)
CACHED_GRAMMAR_BYTES = 48 << 20
CACHED_OUTCOME_BYTES = 16 << 20
# llguidance's defaults, but errors without its parser state (schemas' contents, internal dumps)
LIMITS = llguidance.LLParserLimits(verbose_errors=False)
# JSON on one line, with a space after ':' and ','. With JSON's free whitespace allowed, a small model
# can emit newlines until max_tokens (seen here); a schema's own "x-guidance" overrides this.
JSON_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
# not strict: unknown keywords ignored (the output is validated after), oneOf enforced as anyOf (sound with
# that validation: an output matching two branches fails it)
LENIENT_LAYOUT = JSON_LAYOUT | {"lenient": True, "coerce_one_of": True}
# what a looser attempt drops: regexes llguidance's engine cannot run (look-around, backreferences) and
# formats it does not know; the validation of the output still checks them
_REGEX_KEYWORDS = frozenset({"pattern", "patternProperties", "propertyNames", "format"})
# llguidance's reasons for a schema it cannot enforce (rather than one that is wrong, or past its size limits,
# like `a{99999999}`): a looser try follows
MAX_RELAXATIONS = 8  # sub-schemas replaced by {} before a coarser fallback
_POINTER = re.compile(r"json-schema:///#(/[^\s'\"]+)")
# llguidance's limit on a schema's nodes (fixed in its code): the same schema written out may fit
_TOO_LARGE = "schema too large"
_CANNOT_ENFORCE = ("regex parse error", "not supported", "unsupported", "Unimplemented", "Unknown format")


@dataclass(frozen=True)
class Refusal:
    """A schema the compiler refused, kept so that the same schema is refused again without the work."""

    reason: str


class ConstraintCompiler:
    """Per model: schema or grammar text → a fresh matcher for one request."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self._tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self._grammars: SizedCache[tuple[str, str, bool], str] = SizedCache(
            max_entries=CACHED_GRAMMARS,
            max_bytes=CACHED_GRAMMAR_BYTES,
            size_of=lambda key, grammar: len(key[1]) + len(grammar),  # characters: ~bytes, mostly ASCII
        )
        # a schema as sent (and strict or not) → the text compiled for it, or why it was refused
        self._outcomes: SizedCache[tuple[str, bool], str | Refusal] = SizedCache(
            max_entries=CACHED_GRAMMARS,
            max_bytes=CACHED_OUTCOME_BYTES,
            size_of=lambda key, outcome: len(key[0]) + len(outcome if isinstance(outcome, str) else outcome.reason),
        )

    def matcher(
        self, *, json_schema: dict[str, Any] | None, grammar: str | None, strict: bool = True
    ) -> llguidance.LLMatcher | None:
        """A matcher for one request (None without a constraint); InvalidRequest naming the problem.

        `strict`: a schema with any part llguidance cannot enforce is refused. Otherwise what it can enforce
        is (keywords it does not implement are left to the validation of the finished output,
        engine/schema_check.py; `if`/`then`/`else` as choices, conditionals.py), and a schema it cannot
        compile at all is enforced more loosely: without its regexes and formats, then as its top-level
        type, then as any JSON value. Either way, definitions nothing refers to are dropped first
        (unused_definitions.py), a branch's restatement of its object's own property by reference is dropped
        (restated_properties.py) and an enumerated property is narrowed per branch (object_branches.py)."""
        if json_schema is None and grammar is None:
            return None
        if grammar is not None:
            return self._matcher_for("grammar", grammar, refuse_unsupported=True)
        # Keyed by the schema as sent: the passes below walk all of it (a 1.4 MB schema: ~0.5 s), and a
        # refusal is as certain the second time (a client repeating a slow-to-fail schema costs nothing)
        outcome = self._outcomes.get_or_make(
            (json.dumps(json_schema), strict), lambda: self._schema_outcome(json_schema, strict)
        )
        if isinstance(outcome, Refusal):
            raise InvalidRequest(outcome.reason)
        return self._matcher_for("json_schema", outcome, refuse_unsupported=strict)

    def _schema_outcome(self, json_schema: dict[str, Any], strict: bool) -> str | Refusal:
        try:
            return self._schema_text(json_schema, strict)
        except InvalidRequest as exc:
            return Refusal(str(exc))

    def _schema_text(self, json_schema: dict[str, Any], strict: bool) -> str:
        """The text llguidance compiled for this schema (see matcher); InvalidRequest if none."""
        meta = json_schema.get("$schema")
        pruned = without_unused_definitions(without_restated_properties(_without_meta_schema(json_schema)))
        schema = with_values_per_branch(with_presence_exact(pruned), meta)
        if strict:
            for _ in range(3):
                text = json.dumps({"x-guidance": JSON_LAYOUT} | schema)
                try:
                    self._compiled("json_schema", text, True)
                    return text
                except InvalidRequest as exc:
                    if (exact := _exactly_rewritten(schema, str(exc), meta)) is None:
                        raise
                    schema = exact
        # the rewrites first (the conditionals as choices: looser than the schema, tighter than ignoring
        # them; presence exactly); one that fails to compile for any reason (an intersection llguidance
        # finds too large) gives way to the next, and at last to the schema as sent
        rewrites: list[dict[str, Any]] = []
        for rewritten in (with_conditionals_as_choices(schema, meta), schema):
            if rewritten is not pruned and all(rewritten is not r for r in rewrites):
                rewrites.append(rewritten)
        first: InvalidRequest | None = None
        for candidate in rewrites + _looser(pruned):
            rewrite = any(candidate is r for r in rewrites)
            for _ in range(MAX_RELAXATIONS + 1):
                text = json.dumps({"x-guidance": LENIENT_LAYOUT} | candidate)
                try:
                    self._compiled("json_schema", text, False)
                    return text
                except InvalidRequest as exc:
                    if not rewrite:  # the reason a refusal gives is the schema's as sent
                        first = first or exc
                    if (exact := _exactly_rewritten(candidate, str(exc), meta)) is not None:
                        candidate = exact
                        continue
                    if not any(words in str(exc) for words in _CANNOT_ENFORCE):
                        if rewrite:
                            break
                        raise  # the schema itself is wrong (unsatisfiable, a dangling $ref): say so now
                    if (relaxed := _relaxed_where_named(candidate, str(exc))) is None:
                        break
                    candidate = relaxed
        assert first is not None
        raise first

    def _matcher_for(self, kind: str, text: str, refuse_unsupported: bool) -> llguidance.LLMatcher:
        return self._new_matcher(kind, self._compiled(kind, text, refuse_unsupported))

    def _compiled(self, kind: str, text: str, refuse_unsupported: bool) -> str:
        try:
            return self._grammars.get_or_make(
                (kind, text, refuse_unsupported), lambda: self._compile(kind, text, refuse_unsupported)
            )
        except BaseException as exc:
            if not is_panic(exc):
                raise
            raise InvalidRequest(_describe(kind, "the compiler failed on it (llguidance panicked)")) from None

    def _compile(self, kind: str, text: str, refuse_unsupported: bool) -> str:
        """Schema or grammar text → llguidance's grammar. Keywords llguidance would ignore are refused when
        `refuse_unsupported` (a strict schema must mean what it says), and so is a grammar whose first token
        already fails."""
        try:
            grammar = llguidance.grammar_from(kind, text)
        except Exception as exc:  # ValueError, and bare Exceptions from its GBNF converter
            raise InvalidRequest(_describe(kind, str(exc))) from None
        _, warnings = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        unsupported = [w for w in warnings if "Unimplemented" in w or "unsupported" in w.lower()]
        if unsupported and refuse_unsupported:
            raise InvalidRequest(_describe(kind, unsupported[0]))
        probe = self._new_matcher(kind, grammar)
        mask = np.frombuffer(probe.compute_bitmask(), dtype=np.uint8)
        first = np.flatnonzero(np.unpackbits(mask, bitorder="little")[: self._lltokenizer().vocab_size])
        if probe.is_error() or (first.size and not probe.consume_token(int(first[0]))):
            raise InvalidRequest(_describe(kind, probe.get_error() or "it fails at its first token"))
        return grammar

    def _new_matcher(self, kind: str, grammar: str) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self._lltokenizer(), grammar, log_level=0, limits=LIMITS)
        if matcher.is_error():
            raise InvalidRequest(_describe(kind, matcher.get_error()))
        return matcher

    def _lltokenizer(self) -> llguidance.LLTokenizer:
        # The vocabulary's token table (~0.2 s for 49k tokens): built at the first constrained request.
        with self._lock:
            if self._tokenizer is None:
                with warnings.catch_warnings():  # llguidance calls llama_token_get_attr, deprecated there
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(self._vocab)
            return self._tokenizer


def is_panic(exc: BaseException) -> bool:
    """A Rust panic inside llguidance (pyo3's PanicException derives from BaseException, so `except
    Exception` lets it through). Seen: its error formatting slices a message inside a UTF-8 character
    (`$ref` holding an object with non-ASCII keys)."""
    return type(exc).__name__ == "PanicException"


def _without_meta_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without a `$schema` naming one of json-schema.org's meta-schemas: llguidance resolves it as
    a reference it cannot fetch, and refuses the generic `http://json-schema.org/schema` that any validator
    takes. Which draft a schema is written in does not change what llguidance enforces."""
    meta = schema.get("$schema")
    if isinstance(meta, str) and urlsplit(meta).netloc == "json-schema.org":
        return {k: v for k, v in schema.items() if k != "$schema"}
    return schema


def _exactly_rewritten(schema: dict[str, Any], problem: str, meta: Any) -> dict[str, Any] | None:
    """The schema in a form llguidance may compile where it refused this one (`problem`), the same values
    valid; None if there is none."""
    if _TOO_LARGE in problem and (smaller := with_properties_in_branches(schema)) is not schema:
        return smaller
    return exactly_relaxed(schema, problem, meta)


def _looser(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema, then looser versions of it to enforce when it cannot be compiled as it is."""
    candidates = [schema, _without(schema, _REGEX_KEYWORDS)]
    top = schema.get("type")
    if isinstance(top, str) or (isinstance(top, list) and all(isinstance(t, str) for t in top)):
        candidates.append({"type": top})
    candidates.append({})
    unique: list[dict[str, Any]] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _relaxed_where_named(schema: dict[str, Any], problem: str) -> dict[str, Any] | None:
    """The schema with the sub-schema llguidance's error points at (json-schema:///#/definitions/x, e.g. a
    circular reference it cannot handle) replaced by {} (anything; the output check still covers it), so
    the rest stays enforced. None if the error names no place in the schema."""
    found = _POINTER.search(problem)
    if found is None:
        return None
    parts = pointer_tokens(found.group(1))
    relaxed = copy.deepcopy(schema)
    node: Any = relaxed
    try:
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = {}
        elif isinstance(node, dict) and last in node and node[last] != {}:
            node[last] = {}
        else:
            return None
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    return relaxed


def _without(schema: dict[str, Any], keywords: frozenset[str]) -> Any:
    """`schema` with those keywords dropped from every schema in it. Maps of names to schemas keep their
    names (a property may be called "pattern"), and values (enum, const, …) are left as they are."""
    return map_schemas(schema, lambda node: {key: item for key, item in node.items() if key not in keywords})


def _one_line(problem: str) -> str:
    """llguidance's reason on one line, whole: "regex parse error:" alone says nothing, the why is its last
    line ("error: look-around … is not supported"), with the offending pattern in between."""
    lines = [line.strip() for line in problem.strip().splitlines() if line.strip()]
    if not lines:
        return "it could not be compiled"
    head = lines[0]
    if head.endswith(":") and len(lines) > 1:
        why = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1])
        return f"{head} {why.removeprefix('error:').strip()} (in {lines[1][:120]!r})"
    if "is not present in a registry" in head:  # a $ref to another document, which nobody fetches
        ref = head.split("'")[1] if head.count("'") >= 2 else "another document"
        return f"it refers to {ref!r}, which this server does not fetch: put that schema under $defs"
    if "coerce_one_of" in head:  # an llguidance option the caller cannot set
        return "`oneOf` is not supported; use `anyOf` (the same whenever no value can match two branches)"
    return head


def _describe(kind: str, problem: str) -> str:
    problem = _one_line(problem)
    if kind == "json_schema":
        return f"`json_schema` is not a schema this server can enforce: {problem}"[:480]
    return f"`grammar` is not a valid GBNF or Lark grammar: {problem}"[:480]


class TokenMask:
    """Applies a matcher's allowed tokens to one row of logits, in place, and advances it."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab

    def apply(self, logits: np.ndarray) -> None:
        """`logits`: the row (float32, n_vocab) as a writable view of llama.cpp's buffer."""
        try:
            mask = self._matcher.compute_bitmask()  # bytes: bit i of the little-endian words = token i allowed
        except BaseException as exc:
            raise self._failed() if is_panic(exc) else exc from None
        if self._matcher.is_error():
            raise self._failed()
        allowed = np.unpackbits(np.frombuffer(mask, dtype=np.uint8), bitorder="little")[: self._n_vocab]
        logits[allowed == 0] = -np.inf

    def accept(self, token: int) -> None:
        try:
            accepted = self._matcher.consume_token(token)
        except BaseException as exc:
            raise self._failed() if is_panic(exc) else exc from None
        if not accepted:
            raise self._failed()

    def _failed(self) -> ConstraintFailed:
        # llguidance's error dumps its internal state after the first line: the caller gets that line
        try:
            lines = (self._matcher.get_error() or "").strip().splitlines()
        except BaseException as exc:
            if not is_panic(exc):
                raise
            lines = ["the constraint's matcher failed"]
        return ConstraintFailed(
            "the output constraint (json_schema / grammar) could not go on"
            + (f": {lines[0][:160]}" if lines else "")
            + "; simplify it (huge bounded repetitions such as a{99999} are the usual cause)"
        )
