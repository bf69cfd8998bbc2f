"""The GGUF header reader: agrees with gguf's own reader, and fails only with GGUFFormatError on bad input."""

from __future__ import annotations

import io

import pytest
from gguf import GGUFReader
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.default_model import default_model_path
from engine.llama.adapters.gguf_header import GGUFFormatError, read_gguf_header
from tests.adapter_factory import write_lora


def header_of(data: bytes):
    return read_gguf_header(io.BytesIO(data), len(data))


@pytest.fixture(scope="module")
def small_adapter(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_lora(tmp_path_factory.mktemp("h") / "a.gguf", layers=range(2), rank=2)
    return path.read_bytes()


def test_agrees_with_gguf_reader_on_the_base_model() -> None:
    path = default_model_path()
    with open(path, "rb") as f:
        ours = read_gguf_header(f, path.stat().st_size)
    theirs = GGUFReader(path)
    assert [(t.name, t.shape, t.ggml_type) for t in ours.tensors] == [
        (t.name, tuple(int(x) for x in t.shape), int(t.tensor_type)) for t in theirs.tensors
    ]
    assert ours.metadata["general.architecture"] == "llama"
    assert ours.data_end() == path.stat().st_size


def test_reads_an_adapter(small_adapter: bytes) -> None:
    h = header_of(small_adapter)
    assert h.metadata["general.type"] == "adapter" and h.metadata["adapter.type"] == "lora"
    assert len(h.tensors) == 2 * 2 * 3 and h.data_end() <= len(small_adapter)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(cut=st.integers(min_value=0, max_value=4000))
def test_any_truncation_fails_cleanly(small_adapter: bytes, cut: int) -> None:
    data = small_adapter[:cut]
    try:
        h = header_of(data)
    except GGUFFormatError:
        return
    assert h.data_end() > len(data) or cut >= h.data_end()  # a cut in the data section shows in data_end


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0, max_value=3999), st.integers(0, 255)), max_size=8))
def test_corrupted_bytes_fail_cleanly_or_parse(small_adapter: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(small_adapter)
    for pos, value in flips:
        data[pos % len(data)] = value
    try:
        header_of(bytes(data))
    except GGUFFormatError:
        pass


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_fail_cleanly_or_parse(data: bytes) -> None:
    for candidate in (data, b"GGUF" + data):
        try:
            header_of(candidate)
        except GGUFFormatError:
            pass


def test_counts_larger_than_the_file_are_refused() -> None:
    huge = b"GGUF" + (3).to_bytes(4, "little") + (2**62).to_bytes(8, "little") + (0).to_bytes(8, "little")
    with pytest.raises(GGUFFormatError, match="exceeds the file size"):
        header_of(huge)
