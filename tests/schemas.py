"""100 varied JSON Schemas for the constrained-output tests and benchmark: nested objects, arrays, enums,
numbers with bounds, required and optional properties, strings with patterns. Sizes are bounded
(maxLength, maxItems, no additional properties) so a small model's answer fits in a few hundred tokens."""

from __future__ import annotations

import random
from typing import Any

PATTERNS = ["^[a-z]{3,8}$", "^[A-Z][a-z]{2,10}$", "^[0-9]{3}-[0-9]{4}$", "^(red|green|blue)-[0-9]{1,2}$"]
NAMES = ["id", "name", "color", "size", "score", "tags", "ok", "city", "count", "label"]
WORDS = ["apple", "river", "stone", "cloud", "tiger", "maple", "orbit", "piano", "lemon", "comet"]


def _leaf(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["string", "pattern", "enum", "integer", "number", "boolean", "array"])
    if kind == "string":
        return {"type": "string", "minLength": 1, "maxLength": rng.choice([8, 16, 30])}
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice(PATTERNS)}
    if kind == "enum":
        return {"enum": rng.sample(WORDS, rng.randint(2, 5))}
    if kind == "integer":
        low = rng.randint(-100, 100)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 1000)}
    if kind == "number":
        low = rng.choice([0, -1, 0.5, 10])
        # multipleOf bounds the decimals: greedy decoding of a small model can repeat a digit forever
        step = rng.choice([0.5, 0.25, 0.125])  # exact in binary: jsonschema checks multipleOf with floats
        return {"type": "number", "minimum": low, "maximum": low + rng.choice([1, 5.5, 100]), "multipleOf": step}
    if kind == "boolean":
        return {"type": "boolean"}
    items = rng.choice([{"type": "integer", "minimum": 0, "maximum": 99}, {"enum": rng.sample(WORDS, 3)}])
    return {"type": "array", "items": items, "minItems": rng.randint(0, 2), "maxItems": rng.randint(2, 4)}


def _object(rng: random.Random, depth: int) -> dict[str, Any]:
    names = rng.sample(
        ["id", "name", "color", "size", "score", "tags", "ok", "city", "count", "label"], rng.randint(1, 4)
    )
    properties = {name: _object(rng, depth + 1) if depth < 2 and rng.random() < 0.25 else _leaf(rng) for name in names}
    required = [n for n in names if rng.random() < 0.7] or names[:1]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def varied_schemas(n: int = 100) -> list[dict[str, Any]]:
    schemas = []
    for i in range(n):
        rng = random.Random(i)
        if i % 10 == 9:  # some top-level arrays
            schemas.append({"type": "array", "items": _object(rng, 1), "minItems": 1, "maxItems": 2})
        else:
            schemas.append(_object(rng, 0))
    return schemas
