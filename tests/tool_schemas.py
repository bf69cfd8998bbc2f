"""Varied function-parameter schemas, as agent frameworks send them: flat and nested objects, enums,
bounded strings and numbers, arrays, optional and nullable fields, `$defs` with `$ref` (pydantic's
output), `anyOf`. Deterministic (a seeded generator), so a failure names a schema that can be rebuilt."""

from __future__ import annotations

import random
from typing import Any

WORDS = ["city", "query", "limit", "unit", "tags", "date", "user", "amount", "items", "path", "mode", "title"]


def _leaf(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(["string", "enum", "integer", "number", "boolean", "array", "nullable", "format"])
    if kind == "string":
        return {"type": "string", "maxLength": rng.choice([8, 20, 40]), "description": "a short text"}
    if kind == "enum":
        return {"type": "string", "enum": rng.sample(["low", "mid", "high", "celsius", "fahrenheit", "asc"], 3)}
    if kind == "integer":
        low = rng.randint(-5, 5)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 100)}
    if kind == "number":
        return {"type": "number", "minimum": 0, "maximum": 1000}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "array":
        return {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 3}
    if kind == "nullable":
        return {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "null"}]}
    return {"type": "string", "format": rng.choice(["date", "date-time", "uuid"])}


def _object(rng: random.Random, depth: int) -> dict[str, Any]:
    names = rng.sample(WORDS, rng.randint(1, 4))
    properties = {name: _object(rng, depth + 1) if depth < 2 and rng.random() < 0.2 else _leaf(rng) for name in names}
    required = [n for n in names if rng.random() < 0.7] or names[:1]
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if rng.random() < 0.5:
        schema["additionalProperties"] = False
    return schema


def _with_defs(rng: random.Random) -> dict[str, Any]:
    """pydantic's shape: a model referring to another through $defs."""
    inner = _object(rng, 2)
    return {
        "$defs": {"Inner": inner | {"title": "Inner"}},
        "type": "object",
        "properties": {"target": {"$ref": "#/$defs/Inner"}, "note": {"type": "string", "maxLength": 30}},
        "required": ["target"],
        "title": "Arguments",
    }


def tool_schemas(count: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """`count` OpenAI function tools, each {"type": "function", "function": {name, description, parameters}}."""
    rng = random.Random(seed)
    tools = []
    for i in range(count):
        parameters = _with_defs(rng) if i % 7 == 3 else _object(rng, 0)
        tools.append(
            {
                "type": "function",
                "function": {"name": f"tool_{i}", "description": f"Do task number {i}.", "parameters": parameters},
            }
        )
    return tools
