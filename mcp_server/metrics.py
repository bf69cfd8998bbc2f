"""Prometheus metrics for GET /metrics: per-request metrics observed where calls enter (MCP tools and
the OpenAI routes), engine-wide ones read from `engine.stats()` at scrape time.

Request metrics carry an `adapter_set` label. Adapter names come from agents (load_adapter takes any
name), so the label's values are capped: the first ADAPTER_SET_LABEL_CAP distinct sets get their own
value, every later one shares "other". "base" is the model without adapters; one adapter at scale 1 is
its name; otherwise "name@scale+name@scale", sorted; "none" for a request refused before it was read.
Every generation request is counted in `loramux_requests`, those refused before the engine too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Literal, Self

import anyio
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from engine import (
    EngineBusy,
    EngineError,
    EngineStats,
    GenerateRequest,
    GenerationResult,
    InferenceEngine,
    InvalidRequest,
    RequestStatus,
    RequestTimedOut,
    TextDelta,
)
from engine.request import AdapterKey

Interface = Literal["mcp", "openai"]

# The `_created` timestamp series double the output and no dashboard reads them.
disable_created_metrics()

ADAPTER_SET_LABEL_CAP = 32
OVERFLOW_LABEL = "other"
REFUSED_LABEL = "none"  # the adapter set of a request refused before it was read

# Seconds; a 135M model on 2 cores and a 7B on a GPU both land inside these.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class AdapterSetLabels:
    """Adapter set → label value, with at most `cap` distinct values besides the overflow one."""

    def __init__(self, cap: int = ADAPTER_SET_LABEL_CAP) -> None:
        self._cap = cap
        self._seen: dict[AdapterKey, str] = {(): "base"}

    def __call__(self, key: AdapterKey) -> str:
        label = self._seen.get(key)
        if label is None:
            if len(self._seen) > self._cap:  # "base" does not count against the cap
                return OVERFLOW_LABEL
            label = self._seen[key] = _spell(key)
        return label


def _spell(key: AdapterKey) -> str:
    if len(key) == 1 and key[0][1] == 1.0:
        return key[0][0]
    return "+".join(f"{name}@{scale:g}" for name, scale in key)


class Metrics:
    """Every metric loramux exports, in one registry (not the process-global one, so that several
    servers in one process, as in the tests, each count only their own calls)."""

    def __init__(self, engine: InferenceEngine, *, adapter_set_cap: int = ADAPTER_SET_LABEL_CAP) -> None:
        self.registry = CollectorRegistry()
        self.adapter_set = AdapterSetLabels(adapter_set_cap)
        r = self.registry
        self.requests = Counter(
            "loramux_requests",
            "Generation requests by interface, endpoint, outcome and adapter set.",
            ["interface", "endpoint", "outcome", "adapter_set"],
            registry=r,
        )

        def histogram(name: str, help_text: str, buckets: tuple[float, ...], *labels: str) -> Histogram:
            return Histogram(name, help_text, [*labels, "adapter_set"], buckets=buckets, registry=r)

        self.latency = histogram(
            "loramux_request_latency_seconds",
            "End-to-end time of finished generation requests, from submission to the last token.",
            LATENCY_BUCKETS,
            "interface",
            "endpoint",
        )
        self.ttft = histogram(
            "loramux_time_to_first_token_seconds",
            "Time from submission to the first generated token.",
            TTFT_BUCKETS,
            "interface",
        )
        self.itl = histogram(
            "loramux_inter_token_latency_seconds",
            "Time between consecutive generated tokens of one request (decode steps' end times).",
            ITL_BUCKETS,
            "interface",
        )
        self.queue_wait = histogram(
            "loramux_queue_wait_seconds", "Time a request waited for a free sequence.", TTFT_BUCKETS, "interface"
        )
        self.prompt_tokens = Counter(
            "loramux_prompt_tokens", "Prompt tokens of finished requests.", ["interface", "adapter_set"], registry=r
        )
        self.generation_tokens = Counter(
            "loramux_generation_tokens", "Tokens generated.", ["interface", "adapter_set"], registry=r
        )
        self.busy = Counter(
            "loramux_busy_rejections", "Requests refused because the queue was full.", ["interface"], registry=r
        )
        r.register(EngineCollector(engine))

    def refused(self, interface: Interface, endpoint: str, outcome: str) -> None:
        """Count a generation request refused before it reached the engine (an invalid field, an unknown
        model, a body too large, a missing token): its adapter set is not known, so it is "none"."""
        self.requests.labels(interface, endpoint, outcome, REFUSED_LABEL).inc()

    def generate(
        self, engine: InferenceEngine, request: GenerateRequest, interface: Interface, endpoint: str
    ) -> Metered:
        """`engine.generate(request)`, observed."""
        return Metered(self, engine, request, interface, endpoint)


class Metered:
    """A GenerationStream that records the request's metrics when it ends, however it ends."""

    def __init__(
        self, metrics: Metrics, engine: InferenceEngine, request: GenerateRequest, interface: Interface, endpoint: str
    ) -> None:
        self._m = metrics
        self._stream = engine.generate(request)
        self._interface = interface
        self._endpoint = endpoint
        self._adapter_set = metrics.adapter_set(request.adapter_key)
        self._itl = metrics.itl.labels(interface, self._adapter_set)  # looked up once: observed per token
        self._last_token_at: float | None = None
        self._tokens = 0
        self._failure: BaseException | None = None  # what ended the iteration, if it raised

    @property
    def result(self) -> GenerationResult | None:
        return self._stream.result

    def abort(self) -> None:
        self._stream.abort()

    def status(self) -> RequestStatus:
        return self._stream.status()

    async def __aenter__(self) -> Self:
        try:
            await self._stream.__aenter__()
        except BaseException as exc:
            self._count(_outcome(exc))
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._stream.__aexit__(exc_type, exc, tb)
        finally:
            self._record(exc)

    def __aiter__(self) -> AsyncIterator[TextDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[TextDelta]:
        try:
            async for delta in self._observed():
                yield delta
        except BaseException as exc:  # callers may handle it and leave the block normally
            self._failure = exc
            raise

    async def _observed(self) -> AsyncIterator[TextDelta]:
        async for delta in self._stream:
            now = delta.at or time.monotonic()  # the engine's time, where it gives one
            new = delta.completion_tokens - self._tokens
            if self._last_token_at is not None and new > 0:
                # a delta may carry several tokens (held back for UTF-8 or a stop-string prefix)
                gap = (now - self._last_token_at) / new
                for _ in range(new):
                    self._itl.observe(gap)
            self._last_token_at = now
            self._tokens = delta.completion_tokens
            yield delta

    def _record(self, exc: BaseException | None) -> None:
        result = self._stream.result
        if result is None:
            failure = exc or self._failure
            self._count(_outcome(failure) if failure is not None else "cancelled")
            return
        labels = (self._interface, self._adapter_set)
        self._count(result.finish_reason)
        t = result.timings
        self._m.latency.labels(self._interface, self._endpoint, self._adapter_set).observe(t.total_ms / 1000)
        self._m.queue_wait.labels(*labels).observe(t.queue_ms / 1000)
        if t.ttft_ms is not None:
            self._m.ttft.labels(*labels).observe(t.ttft_ms / 1000)
        self._m.prompt_tokens.labels(*labels).inc(result.usage.prompt_tokens)
        self._m.generation_tokens.labels(*labels).inc(result.usage.completion_tokens)

    def _count(self, outcome: str) -> None:
        self._m.requests.labels(self._interface, self._endpoint, outcome, self._adapter_set).inc()
        if outcome == "busy":
            self._m.busy.labels(self._interface).inc()


def refusal_outcome(status: int) -> str:
    """The `outcome` label of a request refused with this HTTP status before the engine saw it."""
    if status in (401, 403, 421):
        return "unauthorized"
    if status == 429:
        return "busy"
    if status in (503, 504):
        return "error"
    return "invalid"


def _outcome(exc: BaseException) -> str:
    """The `outcome` label of a request that ended without a result."""
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled"
    if isinstance(exc, EngineBusy):
        return "busy"
    if isinstance(exc, InvalidRequest):
        return "invalid"
    if isinstance(exc, RequestTimedOut):
        return "timeout"
    if isinstance(exc, EngineError):
        return "error"
    return "cancelled" if isinstance(exc, GeneratorExit) else "error"


class EngineCollector(Collector):
    """Engine-wide metrics, read from the engine's counters at each scrape (nothing on the decode path)."""

    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        stats = self._engine.stats()
        yield _gauge("loramux_requests_running", "Requests being generated.", stats.running)
        yield _gauge("loramux_requests_waiting", "Requests queued for a free sequence.", stats.waiting)
        yield _gauge("loramux_adapters_loaded", "LoRA adapters loaded.", stats.adapters_loaded)
        state = GaugeMetricFamily("loramux_engine_state", "1 for the engine's current state.", labels=["state"])
        state.add_metric([self._engine.state.value], 1)
        yield state
        for name, help_text, value in (
            ("loramux_decode_steps", "Decode steps run.", stats.steps),
            (
                "loramux_adapter_loads",
                "Adapters loaded (a repeated load of the same file is not counted).",
                stats.adapter_loads,
            ),
            ("loramux_adapter_unloads", "Adapters unloaded (evictions included).", stats.adapter_unloads),
            (
                "loramux_adapter_evictions",
                "Idle adapters unloaded to stay within the residency budget.",
                stats.adapter_evictions,
            ),
            (
                "loramux_adapter_reloads",
                "Loads that replaced a resident adapter with a new version (by a load or --watch-adapters).",
                stats.adapter_reloads,
            ),
            (
                "loramux_adapter_first_use_loads",
                "Adapters loaded because a request named one that was not resident.",
                stats.adapter_first_use_loads,
            ),
            (
                "loramux_adapter_first_use_wait_seconds",
                "Seconds requests waited for their adapters' first-use loads, in all.",
                stats.adapter_first_use_wait_seconds,
            ),
            ("loramux_prefix_cache_hits", "Admissions that reused a cached prompt prefix.", stats.prefix_hits),
            ("loramux_prefix_cache_misses", "Admissions that found no cached prefix.", stats.prefix_misses),
            (
                "loramux_prefix_cache_tokens_saved",
                "Prompt tokens not prefilled thanks to the prefix cache.",
                stats.prefix_tokens_saved,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        for metric in stats.backend:  # what only this backend counts, under the names it gives
            family = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            yield family(f"loramux_{metric.name}", metric.help, value=metric.value)
        yield _sequences_per_step(stats.sequences_per_step)
        yield from _replica_metrics(stats)
        yield from _gateway_metrics(stats)


def _replica_metrics(stats: EngineStats) -> Iterable[Metric]:
    """Replicas ready and wanted (1 and 1 in one process), and, behind Ray, each replica's own numbers."""
    replicas = GaugeMetricFamily("loramux_replicas", "Engine replicas ready, and wanted.", labels=["state"])
    replicas.add_metric(["ready"], stats.replicas_ready)
    replicas.add_metric(["wanted"], stats.replicas_wanted)
    yield replicas
    if not stats.by_replica:
        return
    families = (
        (GaugeMetricFamily, "loramux_replica_requests_running", "Requests being generated, by replica.", "running"),
        (GaugeMetricFamily, "loramux_replica_requests_waiting", "Requests queued, by replica.", "waiting"),
        (CounterMetricFamily, "loramux_replica_decode_steps", "Decode steps run, by replica.", "steps"),
        (CounterMetricFamily, "loramux_replica_tokens_generated", "Tokens generated, by replica.", "tokens_generated"),
        (CounterMetricFamily, "loramux_replica_adapters_loaded", "Adapters resident, by replica.", "adapters_loaded"),
    )
    for family, name, help_text, field in families:
        metric = family(name, help_text, labels=["replica"])
        for replica, own in sorted(stats.by_replica.items()):
            metric.add_metric([replica], getattr(own, field))
        yield metric


# max_lora without --max-loaded-adapters: any number may be resident and mixed in a step (an integer,
# since gateways parse it as one).
NO_ADAPTER_LIMIT = 65535


def _gateway_metrics(stats: EngineStats) -> Iterable[Metric]:
    """The model-server metrics the Kubernetes Gateway API Inference Extension (and llm-d) route by, under
    vLLM's names: queue, running, KV-cache use, and which adapters running and waiting requests use."""
    yield _gauge("vllm:num_requests_waiting", "Requests queued (for inference gateways).", stats.waiting)
    yield _gauge("vllm:num_requests_running", "Requests being generated (for inference gateways).", stats.running)
    used = {m.name: m.value for m in stats.backend}
    usage = used.get("kv_cells_used", 0) / used["kv_cells_total"] if used.get("kv_cells_total") else 0.0
    yield _gauge("vllm:kv_cache_usage_perc", "KV-cache use, 0 to 1 (for inference gateways).", usage)
    yield _gauge("vllm:gpu_cache_usage_perc", "KV-cache use, 0 to 1 (its older vLLM name).", usage)
    info = GaugeMetricFamily(
        "vllm:lora_requests_info",
        "Adapters of running and waiting requests; the value is when this was read (for inference gateways).",
        labels=["running_lora_adapters", "waiting_lora_adapters", "max_lora"],
    )
    limit = str(NO_ADAPTER_LIMIT if stats.max_adapters is None else stats.max_adapters)
    info.add_metric([",".join(stats.running_adapters), ",".join(stats.waiting_adapters), limit], time.time())
    yield info


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _sequences_per_step(counts: dict[int, int]) -> HistogramMetricFamily:
    """The engine keeps an exact count per batch size; export it as a histogram with a bucket per power
    of two, so that `le="1"` counts steps a request had to itself and the rest shared steps."""
    edges = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    buckets = [(floatToGoString(edge), sum(c for n, c in counts.items() if n <= edge)) for edge in edges]
    total = sum(counts.values())
    buckets.append(("+Inf", total))
    return HistogramMetricFamily(
        "loramux_sequences_per_step",
        "Sequences (requests) carried by each decode step.",
        buckets=buckets,
        sum_value=sum(n * c for n, c in counts.items()),
    )
