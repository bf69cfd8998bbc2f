"""`loramux`: serve the engine over MCP, on stdio (default, for desktop clients) or streamable HTTP (with
the OpenAI-compatible API and /metrics). Options: settings.py."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Iterator

import anyio
import uvicorn

from engine import EngineConfig, EngineError, InferenceEngine, RayOptions, open_engine, serve_http_on_ray
from mcp_server.http_app import MCP_PATH, build_http_app
from mcp_server.settings import Settings, load
from mcp_server.shutdown import stop_on_signals
from mcp_server.stdio import serve_stdio
from mcp_server.tools.server import build_server

logger = logging.getLogger("loramux")


def main(argv: list[str] | None = None) -> None:
    args = load(argv)
    # stdout is the MCP channel on stdio: every log line goes to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":
        # The SDK logs every session and every failed tool call (with its message) at INFO: at an
        # agent's pace that drowns the operator's log. Its warnings and errors still show.
        logging.getLogger("mcp").setLevel(logging.WARNING)
    config = args.engine_config()
    if (ray := args.ray_options()) is not None:
        _serve_on_ray(args, config, ray)
        return
    engine = open_engine(config)
    try:
        if args.http:
            anyio.run(_serve_http, engine, args, config.model_path.name)
        else:
            anyio.run(serve_stdio, build_server(engine, own_engine=True), engine, args.shutdown_grace)
    except* EngineError as group:  # e.g. a preloaded adapter that fails validation
        for exc in _leaves(group):
            sys.stderr.write(f"loramux: {exc}\n")
        raise SystemExit(2) from None
    except* (BrokenPipeError, ConnectionResetError):
        # The stdio client was killed (or closed our stdout): there is nobody left to answer.
        logger.info("the MCP client closed the connection; stopped")
    else:
        logger.info("stopped")


def _serve_on_ray(args: Settings, config: EngineConfig, options: RayOptions) -> None:
    """--replicas / --ray-address: the same HTTP app as an ingress deployment beside the engine replicas,
    Ray Serve's proxy on the port. One ingress keeps MCP sessions (a 2025-era client's cancel reaches its
    call); several serve MCP statelessly, so that any of them answers any request."""
    front_end = functools.partial(
        build_http_app,
        host=args.host,
        allowed_hosts=tuple(args.allowed_hosts),
        auth_token=args.auth_token,
        metrics_adapter_sets=args.metrics_adapter_sets,
        stateless=options.ingress_replicas > 1,
    )
    app = serve_http_on_ray(front_end, config, options, host=args.host, port=args.port, grace_s=args.shutdown_grace)
    where = f"Ray cluster {options.address}" if options.address else "a local Ray instance"
    logger.info("starting %d engine replicas (%d threads each) on %s", options.replicas, options.replica_threads, where)
    try:
        app.start()
    except Exception as exc:  # Serve gave up on the replicas (e.g. a preloaded adapter fails validation)
        logger.error("the engine replicas could not start: %s", exc)
        app.stop()
        raise SystemExit(2) from None
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    stateless = " (stateless)" if options.ingress_replicas > 1 else ""
    logger.info("MCP endpoint http://%s:%d%s%s", url_host, args.port, MCP_PATH, stateless)
    logger.info("OpenAI-compatible API http://%s:%d/v1  (metrics: /metrics, health: /health)", url_host, args.port)
    try:
        anyio.run(_until_signal)
    finally:
        logger.info("stopping: open requests get up to %g s to finish", args.shutdown_grace)
        app.stop()
        logger.info("stopped")


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("%s received", signal.Signals(signum).name)
            return


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        yield from _leaves(exc) if isinstance(exc, BaseExceptionGroup) else (exc,)


# After the drain, how long connections that never end on their own (a client's open GET stream for
# server notifications) may stay before uvicorn cancels them.
LINGER_S = 2.0


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: loramux drains the engine first (shutdown.py), then
    sets should_exit. uvicorn's would stop the server at once and re-raise the signal afterwards."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve_http(engine: InferenceEngine, args: Settings, model_name: str) -> None:
    host, port = args.host, args.port
    failures: list[BaseException] = []

    def on_engine_failure(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = build_http_app(
        engine,
        host=host,
        allowed_hosts=args.allowed_hosts,
        auth_token=args.auth_token,
        on_engine_failure=on_engine_failure,
        metrics_adapter_sets=args.metrics_adapter_sets,
    )
    server = _Uvicorn(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=LINGER_S,
        )
    )
    url_host = f"[{host}]" if ":" in host else host
    logger.info("model %s (loading)", model_name)
    logger.info("MCP endpoint http://%s:%d%s", url_host, port, MCP_PATH)
    logger.info("OpenAI-compatible API http://%s:%d/v1  (metrics: /metrics, health: /health)", url_host, port)

    async def close() -> None:
        server.should_exit = True  # uvicorn lets the answers' responses finish, then stops

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signals, engine, args.shutdown_grace, close)
        await server.serve()
        tg.cancel_scope.cancel()
    if failures:  # the engine could not start (e.g. a preloaded adapter failed validation)
        raise failures[0]
    if not server.started:  # uvicorn could not start (e.g. the port is taken) and has logged why
        raise SystemExit(3)
