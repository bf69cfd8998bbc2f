"""The OpenAI surface under hostile requests: each finding of the outside fuzz (issue 20) as a test, against
a spawned `loramux --http` whose adapter directory holds hostile files. Every answer must be a bounded
OpenAI error object or a good answer, never a 500, and the server serves normally afterwards."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.hostile_inputs import BASE_MODEL, MAX_ERROR_BYTES, hostile_adapter_dir, nested_schema_text
from tests.http_server import http_server

CHAT = {"model": BASE_MODEL, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 4}


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    adapters = hostile_adapter_dir(tmp_path_factory.mktemp("hostile") / "adapters")
    with http_server("--max-sequences", "4", "--adapter-dir", str(adapters)) as url:
        yield url


def send(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def call(method: str, url: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    status, raw = send(method, url, None if body is None else json.dumps(body).encode())
    return status, json.loads(raw)


def openai_error(status: int, raw: bytes) -> dict[str, Any]:
    """The error object of an answer, checked: a 4xx, OpenAI's shape, under 1 kB."""
    assert 400 <= status < 500, (status, raw[:300])
    assert len(raw) < MAX_ERROR_BYTES, (status, len(raw), raw[:300])
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    return error


def still_serving(base_url: str) -> None:
    status, body = call("POST", base_url + "/v1/chat/completions", CHAT)
    assert status == 200 and body["choices"][0]["message"]["content"] is not None, body
    status, listing = call("GET", base_url + "/v1/adapters")
    assert status == 200, listing


# -- 1. an adapter with a NaN alpha --------------------------------------------------------------------------


def test_a_nan_alpha_adapter_is_refused_and_nothing_is_loaded(base_url: str) -> None:
    status, raw = send(
        "POST", base_url + "/v1/adapters", json.dumps({"name": "nan", "path": "nan_alpha.gguf"}).encode()
    )
    assert "adapter.lora.alpha is nan" in openai_error(status, raw)["message"]
    status, listing = call("GET", base_url + "/v1/adapters")
    assert status == 200 and [a["name"] for a in listing["adapters"]] == []
    still_serving(base_url)


# -- 2. deep nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/v1/adapters"])
def test_deeply_nested_json_is_400(base_url: str, route: str) -> None:
    status, raw = send("POST", base_url + route, b"[" * 2000 + b"]" * 2000)
    assert "nests arrays and objects more than" in openai_error(status, raw)["message"]
    body = {"x": json.loads("[" * 200 + "]" * 200)}  # under the parser's limit, over the body's
    status, raw = send("POST", base_url + route, json.dumps(body).encode())
    assert "nests" in openai_error(status, raw)["message"]


def nested_schema(depth: int, via: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = (
            {"type": "object", "properties": {"a": schema}}
            if via == "properties"
            else {"type": "array", "items": schema}
        )
    return schema


@pytest.mark.parametrize(("depth", "via"), [(500, "properties"), (2000, "items"), (70, "items")])
def test_deeply_nested_schemas_are_400(base_url: str, depth: int, via: str) -> None:
    schema = nested_schema_text(depth, via)
    chat = json.dumps(CHAT | {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 0}}})
    completion = json.dumps({"model": BASE_MODEL, "prompt": "Hi", "max_tokens": 4, "json_schema": 0})
    for route, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        head, _, tail = body.rpartition("0")
        status, raw = send("POST", base_url + route, (head + schema + tail).encode())
        assert "nests" in openai_error(status, raw)["message"], raw
    still_serving(base_url)


def test_a_schema_of_ordinary_depth_still_works(base_url: str) -> None:
    schema = nested_schema(20, "properties")  # 41 levels of JSON
    body = CHAT | {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    status, answer = call("POST", base_url + "/v1/chat/completions", body)
    assert status == 200, answer


# -- 3. symlink loops ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["self.gguf", "ping.gguf"])
def test_a_symlink_loop_is_400(base_url: str, path: str) -> None:
    status, raw = send("POST", base_url + "/v1/adapters", json.dumps({"name": "loop", "path": path}).encode())
    assert "symlink loop" in openai_error(status, raw)["message"]
    # and the directory listing that hints at loadable files skips the loops
    status, raw = send("POST", base_url + "/v1/adapters", json.dumps({"name": "x", "path": "none.gguf"}).encode())
    assert "caps.gguf" in openai_error(status, raw)["message"]


# -- 4. a pattern that compiles but cannot run ---------------------------------------------------------------


def test_a_pathological_pattern_is_refused_before_generation(base_url: str) -> None:
    schema = {"type": "string", "pattern": "^a{99999999}$"}
    for stream in (False, True):
        body = CHAT | {
            "stream": stream,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        }
        status, raw = send("POST", base_url + "/v1/chat/completions", json.dumps(body).encode())
        error = openai_error(status, raw)
        assert status == 400 and "json_schema" in error["message"] and "too many" in error["message"], error
    still_serving(base_url)


# -- 5. bounded answers ------------------------------------------------------------------------------------


def test_error_answers_are_bounded(base_url: str) -> None:
    status, raw = send("POST", base_url + "/v1/chat/completions", json.dumps(CHAT | {"x" * 10_000: 1}).encode())
    error = openai_error(status, raw)
    assert len(error["param"]) <= 100 and len(error["message"]) <= 480
    status, raw = send("POST", base_url + "/v1/adapters", json.dumps({"name": "x", "path": "p" * 1024}).encode())
    assert len(openai_error(status, raw)["message"]) <= 480
    for i in range(30):  # the 404's list of models must not grow with the adapters loaded
        status, body = call(
            "POST", base_url + "/v1/adapters", {"name": f"caps-copy-number-{i:02d}-" + "n" * 40, "path": "caps.gguf"}
        )
        assert status in (200, 201), body
    try:
        status, raw = send("POST", base_url + "/v1/chat/completions", json.dumps(CHAT | {"model": "m" * 256}).encode())
        error = openai_error(status, raw)
        assert error["code"] == "model_not_found" and "and 26 more" in error["message"], error
    finally:
        for i in range(30):
            call("DELETE", base_url + f"/v1/adapters/caps-copy-number-{i:02d}-" + "n" * 40)


# -- 6. the framework's own answers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "route", "body", "status", "words"),
    [
        ("GET", "/v1/chat/completions", None, 405, "not allowed"),
        ("PUT", "/v1/adapters", b"{}", 405, "not allowed"),
        ("POST", "/v1/embeddings", b"{}", 404, "not served here"),
        ("GET", "/v1/nothing/here", None, 404, "not served here"),
        ("GET", "/v1/models/no-such-model", None, 404, "does not exist"),
    ],
)
def test_every_v1_error_is_an_openai_error_object(
    base_url: str, method: str, route: str, body: bytes | None, status: int, words: str
) -> None:
    got, raw = send(method, base_url + route, body)
    assert got == status, raw[:200]
    assert words in openai_error(got, raw)["message"]


def test_an_oversized_body_is_an_openai_413(base_url: str) -> None:
    """Refused on its declared length, before it is sent whole (as a client streaming a huge body meets it)."""
    url = urlparse(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{url.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {5 << 20}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 65536)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
            re.search(rb"content-length: (\d+)", answer.lower()).group(1)  # type: ignore[union-attr]
        ):
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    assert "too large" in openai_error(413, rest.partition(b"\r\n\r\n")[2])["message"]


def test_models_retrieve_answers_each_listed_model(base_url: str) -> None:
    status, model = call("GET", base_url + f"/v1/models/{BASE_MODEL}")
    assert status == 200 and model["id"] == BASE_MODEL and model["object"] == "model"


def test_a_missing_token_is_an_openai_401_with_its_challenge(tmp_path: Path) -> None:
    with http_server("--auth-token", "s3cret") as url:
        status, raw = send("POST", url + "/v1/chat/completions", json.dumps(CHAT).encode())
        assert status == 401 and "bearer token" in openai_error(status, raw)["message"]
        req = urllib.request.Request(url + "/v1/models")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=10)
        assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
        assert json.load(caught.value)["error"]["code"] == "invalid_api_key"
