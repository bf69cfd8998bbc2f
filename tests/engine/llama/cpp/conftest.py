from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest

from engine.default_model import default_model_path
from engine.llama.cpp.constraints import ConstraintCompiler
from engine.llama.cpp.log import quiet_llama_logs


@pytest.fixture(scope="module")
def compiler() -> Iterator[ConstraintCompiler]:
    """A constraint compiler over the default model's vocabulary (loaded alone: no weights)."""
    quiet_llama_logs()
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(default_model_path()).encode(), params)
    assert model
    try:
        yield ConstraintCompiler(llama_cpp.llama_model_get_vocab(model))
    finally:
        llama_cpp.llama_model_free(model)


def enforces(compiler: ConstraintCompiler, schema: dict[str, Any], text: str, *, strict: bool = False) -> bool:
    """Whether a fresh matcher for the schema takes the whole text and may stop there."""
    matcher = compiler.matcher(json_schema=schema, grammar=None, strict=strict)
    assert matcher is not None
    return bool(matcher.consume_tokens(compiler._lltokenizer().tokenize_str(text))) and matcher.is_accepting()
