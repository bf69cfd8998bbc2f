"""The OpenAI-compatible API, driven by the official `openai` client (unmodified) against a spawned
`loramux --http`, with /metrics read back through prometheus_client's parser."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from engine.config import default_adapter_dir
from tests import ROOT
from tests.http_server import http_server

pytestmark = pytest.mark.anyio

BASE_MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "Tell me about the ocean."}]
GREEDY: dict[str, Any] = {"temperature": 0, "extra_body": {"repeat_penalty": 1.0}}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with http_server("--max-sequences", "4", "--adapter", f"caps={default_adapter_dir() / 'caps.gguf'}") as url:
        yield url


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    # no retries: the tests look at each answer, 429s and 5xx included
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def metrics(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by (name, sorted labels)."""
    with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(snapshot: dict, name: str, **labels: str) -> float:
    return snapshot.get((name, tuple(sorted(labels.items()))), 0.0)


def running(base_url: str) -> int:
    with urllib.request.urlopen(base_url + "/health", timeout=5) as r:
        return json.load(r)["running"]


def wait_until_idle(base_url: str, within_s: float) -> float:
    start = time.monotonic()
    while running(base_url) and time.monotonic() - start < within_s:
        time.sleep(0.05)
    return time.monotonic() - start


# -- generation --------------------------------------------------------------------------------------


def test_chat_stream_and_whole_answer_agree(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=BASE_MODEL, messages=QUESTION, max_tokens=40, **GREEDY)
    assert whole.object == "chat.completion" and whole.model == BASE_MODEL
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None and whole.usage.completion_tokens <= 40
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=BASE_MODEL,
            messages=QUESTION,
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # the usage chunk comes last
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=BASE_MODEL, messages=QUESTION, max_tokens=5, stream=True))
    assert chunks and all(c.usage is None and c.choices for c in chunks)


def test_completions_stream_and_whole_agree_and_stop(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(model=BASE_MODEL, prompt="The capital of France is", max_tokens=12, **GREEDY)
    whole = client.completions.create(**args)
    assert whole.object == "text_completion"
    text = whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 12
    streamed = list(client.completions.create(**args, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text
    assert streamed[-1].choices[0].finish_reason == "length"

    stop = text.split()[1]  # a word inside the greedy answer
    cut = client.completions.create(**args | {"stop": [stop]})
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


def test_default_max_tokens_is_openais(client: openai.OpenAI) -> None:
    # completions: 16 tokens (OpenAI's legacy default); chat: until the model stops or the context ends
    completion = client.completions.create(model=BASE_MODEL, prompt="Once upon a time", extra_body={"ignore_eos": True})
    assert completion.usage.completion_tokens == 16
    chat = client.chat.completions.create(model=BASE_MODEL, messages=QUESTION, seed=7)
    assert chat.usage is not None and chat.usage.completion_tokens > 16
    assert chat.choices[0].finish_reason == "stop" or chat.usage.total_tokens == 2048


def test_seed_reproduces_a_sampled_answer(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(model=BASE_MODEL, messages=QUESTION, max_tokens=30, temperature=1.0, top_p=0.9)
    one, two = (client.chat.completions.create(**args, seed=1234).choices[0].message.content for _ in range(2))
    assert one == two


async def test_openai_answer_equals_the_mcp_tools(client: openai.OpenAI, base_url: str) -> None:
    """One engine request behind both front ends: the same greedy text."""
    answer = client.chat.completions.create(model=BASE_MODEL, messages=QUESTION, max_tokens=30, **GREEDY)
    async with Client(base_url + "/mcp") as mcp:
        result = await mcp.call_tool(
            "llm_inference",
            {"messages": QUESTION, "max_tokens": 30, "temperature": 0, "repeat_penalty": 1.0},
        )
    assert result.structured_content["text"] == answer.choices[0].message.content  # type: ignore[index]


# -- adapters ----------------------------------------------------------------------------------------


def upper_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters)


def test_models_lists_base_and_adapters(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) >= {BASE_MODEL, "caps"}
    assert models["caps"].parent == BASE_MODEL  # type: ignore[attr-defined]


def test_adapter_by_model_and_by_mix(client: openai.OpenAI) -> None:
    base = client.chat.completions.create(model=BASE_MODEL, messages=QUESTION, max_tokens=40, **GREEDY)
    caps = client.chat.completions.create(model="caps", messages=QUESTION, max_tokens=40, **GREEDY)
    assert upper_share(base.choices[0].message.content or "") < 0.3
    assert upper_share(caps.choices[0].message.content or "") > 0.8
    assert caps.model == "caps"

    def mixed(scale: float) -> str | None:
        answer = client.chat.completions.create(
            model=BASE_MODEL,
            messages=QUESTION,
            max_tokens=40,
            temperature=0,
            extra_body={"repeat_penalty": 1.0, "adapters": [{"name": "caps", "scale": scale}]},
        )
        return answer.choices[0].message.content

    assert mixed(1.0) == caps.choices[0].message.content
    assert mixed(0.3) not in (caps.choices[0].message.content, base.choices[0].message.content)


def test_adapter_routes_load_list_unload(base_url: str, client: openai.OpenAI) -> None:
    status, loaded = http("POST", base_url + "/v1/adapters", {"name": "short", "path": "short.gguf"})
    assert status == 201 and loaded["newly_loaded"] and loaded["adapter"]["name"] == "short"
    assert http("POST", base_url + "/v1/adapters", {"name": "short", "path": "short.gguf"})[0] == 200  # idempotent
    status, listing = http("GET", base_url + "/v1/adapters")
    assert status == 200 and {"caps", "short"} <= {a["name"] for a in listing["adapters"]}
    answer = client.chat.completions.create(model="short", messages=QUESTION, max_tokens=60, **GREEDY)
    assert answer.choices[0].finish_reason == "stop"
    status, gone = http("DELETE", base_url + "/v1/adapters/short")
    assert status == 200 and gone == {"name": "short", "unloaded": True, "requests_served": 1}
    with pytest.raises(openai.NotFoundError, match="does not exist"):  # neither loaded nor on disk
        client.chat.completions.create(model="nowhere", messages=QUESTION, max_tokens=4)
    # short.gguf is in the adapter directory: naming it loads it again on first use
    assert client.chat.completions.create(model="short", messages=QUESTION, max_tokens=4).model == "short"
    assert http("DELETE", base_url + "/v1/adapters/short")[0] == 200


def test_adapter_routes_refuse_what_load_adapter_refuses(base_url: str) -> None:
    status, body = http("POST", base_url + "/v1/adapters", {"name": "x", "path": "/etc/passwd"})
    assert status == 400 and "adapter director" in body["error"]["message"]
    status, body = http("POST", base_url + "/v1/adapters", {"name": "x", "path": "missing.gguf"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = http("POST", base_url + "/v1/adapters", {"name": "bad name!", "path": "caps.gguf"})
    assert status == 400 and "letters, digits" in body["error"]["message"], body
    status, body = http("DELETE", base_url + "/v1/adapters/nothing")
    assert status == 404 and body["error"]["code"] == "adapter_not_found"


# -- log-probabilities ---------------------------------------------------------------------------------


def test_chat_logprobs_name_each_token_and_greedy_picks_the_top_1(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=BASE_MODEL, messages=QUESTION, max_tokens=12, logprobs=True, top_logprobs=3, **GREEDY
    )
    choice = answer.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == t.logprob and bytes(t.bytes or []).decode() == t.token
    streamed = client.chat.completions.create(
        model=BASE_MODEL, messages=QUESTION, max_tokens=12, logprobs=True, top_logprobs=3, stream=True, **GREEDY
    )
    pieces = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or ()]
    assert [(t.token, t.logprob) for t in pieces] == [(t.token, t.logprob) for t in tokens]


def test_completions_echo_scores_every_prompt_token_after_the_first(client: openai.OpenAI) -> None:
    prompt = "The capital of France is Paris, and the capital of Italy is Rome."
    answer = client.completions.create(model=BASE_MODEL, prompt=prompt, max_tokens=1, echo=True, logprobs=2, **GREEDY)
    choice = answer.choices[0]
    assert choice.text.startswith(prompt) and choice.logprobs is not None
    scored = choice.logprobs
    n_prompt = answer.usage.prompt_tokens
    assert "".join(scored.tokens[:n_prompt]) == prompt
    assert scored.token_logprobs[0] is None and scored.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in scored.token_logprobs[1:])
    assert len(scored.token_logprobs) == n_prompt + 1 and scored.text_offset[n_prompt] == len(prompt)
    assert all(len(top) == 2 for top in scored.top_logprobs[1:])
    streamed = client.completions.create(
        model=BASE_MODEL, prompt=prompt, max_tokens=1, echo=True, logprobs=2, stream=True, **GREEDY
    )
    chunks = [c.choices[0] for c in streamed if c.choices]
    assert "".join(c.text for c in chunks) == choice.text
    assert [lp for c in chunks if c.logprobs for lp in c.logprobs.token_logprobs] == scored.token_logprobs


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "param", "words"),
    [
        ({"n": 2}, "n", "only n=1"),
        ({"temperature": 5}, "temperature", "less than or equal to 2"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name", "match"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate", "not a field"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"extra_body": {"adapters": [{"name": "caps", "scale": 9}]}}, "adapters.0.scale", "less than or equal"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    client: openai.OpenAI, args: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=BASE_MODEL, messages=QUESTION, **args)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and words in error["message"], error


def test_unknown_model_and_adapter_are_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert caught.value.code == "model_not_found" and BASE_MODEL in caught.value.message
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model=BASE_MODEL, prompt="hi", extra_body={"adapters": [{"name": "nope"}]})
    assert caught.value.code == "adapter_not_found"


def test_malformed_body_is_400(base_url: str) -> None:
    req = urllib.request.Request(base_url + "/v1/chat/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=10)
    assert caught.value.code == 400 and "not valid JSON" in json.load(caught.value)["error"]["message"]


def test_busy_is_429_with_retry_after_and_counted() -> None:
    with http_server("--max-sequences", "1", "--queue-depth", "0") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        long = client.completions.create(
            model=BASE_MODEL, prompt="Write an essay.", max_tokens=2000, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(long))  # it runs
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model=BASE_MODEL, prompt="hi", max_tokens=4)
        assert caught.value.response.headers["Retry-After"] == "2"
        assert "busy" in caught.value.message
        long.close()
        after = metrics(url)
        assert sample(after, "loramux_busy_rejections_total", interface="openai") == 1
        busy = dict(interface="openai", endpoint="/v1/completions", outcome="busy", adapter_set="base")
        assert sample(after, "loramux_requests_total", **busy) == 1


# -- disconnects -------------------------------------------------------------------------------------


def test_stream_disconnect_frees_the_sequence(client: openai.OpenAI, base_url: str) -> None:
    stream = client.chat.completions.create(
        model=BASE_MODEL, messages=QUESTION, max_tokens=3000, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    next(chunks), next(chunks)
    assert running(base_url) == 1
    stream.close()
    assert wait_until_idle(base_url, within_s=5) < 2


def test_non_stream_disconnect_frees_the_sequence(base_url: str) -> None:
    impatient = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(
            model=BASE_MODEL, prompt="Write an essay.", max_tokens=3000, extra_body={"ignore_eos": True}
        )
    assert wait_until_idle(base_url, within_s=5) < 2


# -- metrics -----------------------------------------------------------------------------------------


def test_metrics_count_requests_tokens_and_adapters(client: openai.OpenAI, base_url: str) -> None:
    before = metrics(base_url)
    answer = client.chat.completions.create(model="caps", messages=QUESTION, max_tokens=8, **GREEDY)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="caps", messages=QUESTION, n=3)
    after = metrics(base_url)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    chat = dict(interface="openai", endpoint="/v1/chat/completions", adapter_set="caps")
    assert moved("loramux_requests_total", outcome=answer.choices[0].finish_reason, **chat) == 1
    assert moved("loramux_generation_tokens_total", interface="openai", adapter_set="caps") == 8
    prompt_tokens = moved("loramux_prompt_tokens_total", interface="openai", adapter_set="caps")
    assert prompt_tokens == answer.usage.prompt_tokens  # type: ignore[union-attr]
    assert moved("loramux_request_latency_seconds_count", **chat) == 1
    assert moved("loramux_time_to_first_token_seconds_count", interface="openai", adapter_set="caps") == 1
    assert moved("loramux_queue_wait_seconds_count", interface="openai", adapter_set="caps") == 1
    assert moved("loramux_inter_token_latency_seconds_count", interface="openai", adapter_set="caps") == 7
    assert moved("loramux_decode_steps_total") >= 8
    assert sample(after, "loramux_adapters_loaded") >= 1 and sample(after, "loramux_adapter_loads_total") >= 1
    assert sample(after, "loramux_kv_cells_total") == 4 * 2048
    assert sample(after, "loramux_engine_state", state="ready") == 1
    assert {"loramux_prefix_cache_hits_total", "loramux_prefix_cache_tokens_saved_total"} <= {name for name, _ in after}
    assert {"loramux_requests_running", "loramux_requests_waiting", "loramux_kv_cells_used"} <= {
        name for name, _ in after
    }


async def test_mcp_and_openai_calls_share_decode_steps(base_url: str) -> None:
    """An OpenAI stream and an MCP tool call at the same time are decoded in the same steps."""
    before = metrics(base_url)
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    first_token = anyio.Event()

    async def openai_stream() -> None:
        stream = await client.chat.completions.create(
            model=BASE_MODEL, messages=QUESTION, max_tokens=400, stream=True, extra_body={"ignore_eos": True}
        )
        async for _ in stream:
            first_token.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(openai_stream)
        await first_token.wait()
        async with Client(base_url + "/mcp") as mcp:
            result = await mcp.call_tool("llm_inference", {"prompt": "Say hi.", "max_tokens": 20, "ignore_eos": True})
        assert not result.is_error
    await client.close()
    after = metrics(base_url)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    shared = moved("loramux_sequences_per_step_count") - moved("loramux_sequences_per_step_bucket", le="1.0")
    assert shared >= 19  # the MCP call's decode steps all carried the OpenAI stream too
    assert moved("loramux_requests_total", interface="mcp", endpoint="llm_inference", outcome="length",
                 adapter_set="base") == 1  # fmt: skip
    assert moved("loramux_requests_total", interface="openai", endpoint="/v1/chat/completions", outcome="length",
                 adapter_set="base") == 1  # fmt: skip


# -- the README ---------------------------------------------------------------------------------------


def test_the_readme_openai_example_and_metrics_curl_work_as_written() -> None:
    """Run against a fresh server, with only the README's address swapped for the test server's."""
    import re
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## OpenAI-compatible API and metrics") :]
    example = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    curl = re.search(r"`(curl -s http://127\.0\.0\.1:8000/metrics[^`]*)`", section)
    assert example is not None and curl is not None
    with http_server() as url:
        address = url.removeprefix("http://")
        run = subprocess.run(
            [sys.executable, "-c", example.group(1).replace("127.0.0.1:8000", address)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert "completion_tokens=" in run.stdout  # the usage chunk
        caps_answer = run.stdout[run.stdout.index("CompletionUsage(") :].split("\n", 1)[1]
        assert upper_share(caps_answer) > 0.6, run.stdout  # the base model: < 0.2
        scraped = subprocess.run(
            ["bash", "-c", curl.group(1).replace("127.0.0.1:8000", address)], capture_output=True, text=True
        )
    lines = scraped.stdout.splitlines()
    assert scraped.returncode == 0 and lines and all(line.startswith("loramux_requests") for line in lines)
    assert any('interface="openai"' in line and 'adapter_set="caps"' in line for line in lines), lines


def test_a_request_past_the_timeout_is_504() -> None:
    with http_server("--request-timeout", "1") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(
                model=BASE_MODEL, prompt="Write an essay.", max_tokens=5000, extra_body={"ignore_eos": True}
            )
        assert caught.value.status_code == 504 and caught.value.code == "timeout"
        assert "1 s limit" in caught.value.message
        # streamed: the status line has gone out, so the error comes as an event the client raises
        stream = client.completions.create(
            model=BASE_MODEL, prompt="Write an essay.", max_tokens=5000, stream=True, extra_body={"ignore_eos": True}
        )
        with pytest.raises(openai.APIError, match="1 s limit"):
            for _ in stream:
                pass
        # both counted as timeouts (the streamed one ended inside the response, not as a cancellation)
        timeouts = sample(metrics(url), "loramux_requests_total", interface="openai", endpoint="/v1/completions",
                          outcome="timeout", adapter_set="base")  # fmt: skip
        assert timeouts == 2


def test_adapter_set_labels_are_capped() -> None:
    from mcp_server.metrics import OVERFLOW_LABEL, AdapterSetLabels

    labels = AdapterSetLabels(cap=2)
    assert labels(()) == "base"
    assert labels((("caps", 1.0),)) == "caps"
    assert labels((("caps", 0.5), ("short", 1.0))) == "caps@0.5+short@1"
    assert labels((("x", 1.0),)) == OVERFLOW_LABEL  # a third set: over the cap
    assert labels((("caps", 1.0),)) == "caps" and labels(()) == "base"  # known ones keep theirs


def test_a_queued_stream_gets_keep_alive_comments() -> None:
    import socket

    with http_server("--max-sequences", "1") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        long = client.completions.create(
            model=BASE_MODEL, prompt="Write an essay.", max_tokens=1500, stream=True, extra_body={"ignore_eos": True}
        )
        next(iter(long))  # it holds the only sequence
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"model": BASE_MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            received = b""
            deadline = time.monotonic() + 12
            while b": queued" not in received and time.monotonic() < deadline:
                received += sock.recv(4096)
        long.close()
    assert b": queued, next in line" in received, received
