"""`loramux`: serve the engine over MCP, on stdio (default, for desktop clients) or streamable HTTP."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import anyio
from pydantic import ValidationError

from engine import Engine, EngineConfig, EngineError
from engine.config import default_adapter_dir
from mcp_server.http_app import MCP_PATH, build_http_app
from mcp_server.server import build_server

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
    p.add_argument("--threads", type=int, help="llama.cpp threads (default: the number of cores, at most 8)")
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
            anyio.run(build_server(engine, own_engine=True).run_stdio_async)
    except* EngineError as group:  # e.g. a preloaded adapter that fails validation
        for exc in group.exceptions:
            sys.stderr.write(f"loramux: {exc}\n")
        raise SystemExit(2) from None


async def _serve_http(engine: Engine, args: argparse.Namespace) -> None:
    import uvicorn

    host, port = args.host, args.port
    failures: list[BaseException] = []

    def on_engine_failure(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = build_http_app(
        engine,
        build_server(engine),
        host=host,
        allowed_hosts=args.allowed_host,
        auth_token=args.auth_token,
        on_engine_failure=on_engine_failure,
    )
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    url_host = f"[{host}]" if ":" in host else host
    logger.info("model %s (loading)", engine.config.model_path.name)
    logger.info("MCP endpoint http://%s:%d%s  (health: /health)", url_host, port, MCP_PATH)
    await server.serve()
    if failures:  # the engine could not start (e.g. a preloaded adapter failed validation)
        raise failures[0]
    if not server.started:  # uvicorn could not start (e.g. the port is taken) and has logged why
        raise SystemExit(3)
