"""`loramux`: serve the engine over MCP, on stdio (default, for desktop clients) or streamable HTTP."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import uvicorn
from pydantic import ValidationError

from engine import Engine, EngineConfig, EngineError
from engine.config import default_adapter_dir
from mcp_server.http_app import MCP_PATH, build_http_app
from mcp_server.server import build_server
from mcp_server.shutdown import DEFAULT_GRACE_S, stop_on_signals
from mcp_server.stdio import serve_stdio

logger = logging.getLogger("loramux")


def build_parser() -> argparse.ArgumentParser:
    defaults = EngineConfig.model_fields
    p = argparse.ArgumentParser(prog="loramux", description="MCP tool server for a resident local GGUF model.")
    p.add_argument("--model", type=Path, help="GGUF model to serve (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    p.add_argument(
        "--auth-token",
        default=os.environ.get("LORAMUX_AUTH_TOKEN") or None,
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on every HTTP route but /health (default: $LORAMUX_AUTH_TOKEN)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name clients use to reach the server (besides the bind address); repeatable",
    )
    p.add_argument(
        "--context",
        type=int,
        default=defaults["context_per_sequence"].default,
        help="context tokens per request, prompt and answer together (default: %(default)s)",
    )
    p.add_argument(
        "--max-sequences",
        type=int,
        default=defaults["max_sequences"].default,
        help="requests decoded together in one step (default: %(default)s)",
    )
    p.add_argument(
        "--batch-tokens",
        type=int,
        default=defaults["batch_tokens"].default,
        help="most prompt tokens prefilled per step (default: %(default)s)",
    )
    p.add_argument(
        "--group-steps",
        type=int,
        default=defaults["group_steps"].default,
        help="decode steps one adapter group runs before the next group's turn (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, help="most llama.cpp threads (default: the number of cores, at most 8)")
    p.add_argument(
        "--fixed-threads",
        action="store_true",
        help="always use --threads threads, even while other processes keep cores busy",
    )
    p.add_argument(
        "--queue-depth",
        type=int,
        default=defaults["queue_depth"].default,
        help="requests that may wait for a free sequence before calls get a busy error (default: %(default)s)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=defaults["request_timeout"].default,
        help="seconds a request may take, queue wait included (default: %(default)s)",
    )
    p.add_argument(
        "--adapter-dir",
        action="append",
        type=Path,
        metavar="DIR",
        help=f"directory agents may load LoRA adapters from; repeatable (default: {default_adapter_dir()})",
    )
    p.add_argument(
        "--adapter",
        action="append",
        type=_named_path,
        default=[],
        metavar="NAME=PATH",
        help="load this adapter at start; repeatable",
    )
    p.add_argument(
        "--chat-template",
        type=Path,
        metavar="FILE",
        help="Jinja chat template to use instead of the model's own (e.g. to fix a model's template)",
    )
    p.add_argument(
        "--shutdown-grace",
        type=float,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long running calls may take to finish before they are ended "
        "(default: %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _named_path(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, Path(path)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    values: dict[str, object] = dict(
        context_per_sequence=args.context,
        max_sequences=args.max_sequences,
        batch_tokens=args.batch_tokens,
        group_steps=args.group_steps,
        queue_depth=args.queue_depth,
        request_timeout=args.request_timeout,
    )
    if args.model is not None:
        values["model_path"] = args.model
    if args.threads is not None:
        values["threads"] = args.threads
    values["adaptive_threads"] = not args.fixed_threads
    if args.adapter_dir:
        values["adapter_dirs"] = tuple(args.adapter_dir)
    values["preload_adapters"] = tuple(args.adapter)
    if args.chat_template is not None:
        values["chat_template"] = args.chat_template
    return EngineConfig(**values)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # stdout is the MCP channel on stdio: every log line goes to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "DEBUG":
        # The SDK logs every session and every failed tool call (with its message) at INFO: at an
        # agent's pace that drowns the operator's log. Its warnings and errors still show.
        logging.getLogger("mcp").setLevel(logging.WARNING)
    try:
        config = engine_config(args)
    except (ValidationError, FileNotFoundError) as exc:
        sys.stderr.write(f"loramux: invalid configuration:\n{exc}\n")
        raise SystemExit(2) from None
    engine = Engine(config)
    try:
        if args.http:
            anyio.run(_serve_http, engine, args)
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


async def _serve_http(engine: Engine, args: argparse.Namespace) -> None:
    host, port = args.host, args.port
    failures: list[BaseException] = []

    def on_engine_failure(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = build_http_app(
        engine,
        host=host,
        allowed_hosts=args.allowed_host,
        auth_token=args.auth_token,
        on_engine_failure=on_engine_failure,
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
    logger.info("model %s (loading)", engine.config.model_path.name)
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
