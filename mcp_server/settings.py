"""Every option of `loramux`, in one settings model: command-line flags, `LORAMUX_*` environment
variables and an optional TOML file, with that precedence (flags > environment > file > defaults).

The command line (cli.py) and the README's options table are both generated from `Settings`; a test
fails when the README's table drifts (`python -m mcp_server.settings` prints it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import TomlConfigSettingsSource as TomlSource

from engine import EngineConfig, RayOptions
from mcp_server.metrics import ADAPTER_SET_LABEL_CAP
from mcp_server.shutdown import DEFAULT_GRACE_S

ENV_PREFIX = "LORAMUX_"
CONFIG_ENV = "LORAMUX_CONFIG"
_engine = EngineConfig.model_fields


def option(
    description: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    shown_default: str | None = None,
    engine: str | None = None,
    **field: Any,
) -> Any:
    """A field of `Settings` with how it shows on the command line and in the README.

    `engine`: the EngineConfig field it sets, whose bounds and default it takes (one source of truth)."""
    extra = {"flag": flag, "metavar": metavar, "shown_default": shown_default, "engine": engine}
    if engine is not None:
        source = _engine[engine]
        if "default" not in field and "default_factory" not in field:
            field["default"] = None if source.default_factory is not None else source.default
        for constraint in source.metadata:
            for name in ("ge", "le", "gt", "lt"):
                if getattr(constraint, name, None) is not None:
                    field.setdefault(name, getattr(constraint, name))
    return Field(description=description, json_schema_extra={k: v for k, v in extra.items() if v is not None}, **field)


def _split(value: Any) -> Any:
    """Lists from the environment: JSON (`["a","b"]`) or comma-separated (`a,b`)."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            import json

            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True)

    model: Path | None = option(
        "GGUF model to serve", flag="--model", metavar="PATH",
        shown_default="the embedded SmolLM2-135M-Instruct Q4_1", engine="model_path",
    )  # fmt: skip
    http: bool = option("serve streamable HTTP (MCP at /mcp, the OpenAI API at /v1) instead of stdio", default=False)
    host: str = option(
        "HTTP bind address. Every route checks the Host and Origin headers (DNS-rebinding protection): on loopback "
        "only loopback names are accepted (others get 421 / 403). Binding another address without `--auth-token` "
        "logs a loud warning",
        metavar="HOST", default="127.0.0.1",
    )  # fmt: skip
    port: int = option("HTTP port", metavar="N", default=8000, ge=0, le=65535)
    replicas: int | None = option(
        "serve through Ray Serve with N engine replicas, each a llama backend in its own process, routed by adapter "
        "set (with `--http`; starts a local Ray instance unless `--ray-address` is given). See Scaling out on Ray",
        metavar="N", shown_default="one process, no Ray", default=None, ge=1, le=256,
    )  # fmt: skip
    ray_address: str | None = option(
        "join this Ray cluster (`ray start --head` printed it, e.g. `10.0.0.5:6379`) instead of starting one; "
        "implies Ray Serve (`--replicas`, default 1)",
        metavar="ADDR", shown_default="none", default=None, min_length=1,
    )  # fmt: skip
    ingress_replicas: int = option(
        "HTTP front ends behind Ray Serve's proxy. With more than one, MCP is served statelessly (any front end "
        "answers any request), so a 2025-era client's cancel notification cannot reach its call (2026-era clients "
        "cancel by closing the stream, which works)",
        metavar="N", default=1, ge=1, le=64,
    )  # fmt: skip
    replica_threads: int = option(
        "llama.cpp threads per Ray replica, fixed; also its Ray `num_cpus`, so replicas sharing a machine never "
        "compete for cores",
        metavar="K", default=1, ge=1, le=256,
    )  # fmt: skip
    allowed_hosts: Annotated[list[str], NoDecode] = option(
        "a host name clients use to reach the server, accepted in Host and Origin besides the bind address; "
        "repeatable (needed on a `0.0.0.0` bind, where the checks are otherwise off)",
        flag="--allowed-host", metavar="NAME", shown_default="–", default_factory=list,
    )  # fmt: skip
    auth_token: str | None = option(
        "require `Authorization: Bearer TOKEN` on every HTTP route except `/health`; a missing or wrong token gets "
        "401 with `WWW-Authenticate: Bearer … resource_metadata=…`, pointing at "
        "`/.well-known/oauth-protected-resource` (RFC 9728, as the MCP spec asks; it names no authorization server, "
        "since the operator issues the token). Request bodies are limited to 4 MiB (413)",
        metavar="TOKEN", shown_default="none", default=None, min_length=1,
    )  # fmt: skip
    context: int = option(
        "context tokens per request, prompt and answer together; a multiple of 256 (llama.cpp's KV padding)",
        metavar="N", engine="context_per_sequence",
    )  # fmt: skip
    max_sequences: int = option(
        "requests decoded together in one step; KV memory is `context × max-sequences` cells",
        metavar="N", engine="max_sequences",
    )  # fmt: skip
    batch_tokens: int = option(
        "most prompt tokens prefilled per step: longer prompts are prefilled in chunks while running requests keep "
        "generating",
        metavar="N", engine="batch_tokens",
    )  # fmt: skip
    mix_adapters: bool = option(
        "serve requests with different adapter sets in the same decode steps (loramux's llama.cpp patch, applied "
        "by `scripts/setup.sh`, gives each sequence its own adapter scales). `--no-mix-adapters`: sets take turns, "
        "one per step, as in llama-server",
        default=True, engine="mix_adapters",
    )  # fmt: skip
    group_steps: int = option(
        "decode steps one adapter set runs before the next set's turn, when sets take turns (`--no-mix-adapters`, "
        "or a llama.cpp without the patch): larger amortises adapter-set changes, smaller shares time more finely",
        metavar="N", engine="group_steps",
    )  # fmt: skip
    greedy_steps_ms: float = option(
        "while every running request decodes greedily (temperature 0, no schema, penalties or logprobs), "
        "llama.cpp runs decode steps back to back for up to this many ms without returning to Python (loramux's "
        "llama.cpp patch): the same tokens, ~2-3% more throughput on a small CPU model; streamed text comes in "
        "bursts of up to this long. A new request or a cancel still waits one step at most. 0: one step per call",
        metavar="MS", engine="greedy_steps_ms",
    )  # fmt: skip
    gpu_layers: int | None = option(
        "model layers to offload to the GPU. Unset: all of them when llama.cpp was built with a GPU backend "
        "(CUDA, Metal, Vulkan; see GPU offload) and sees a GPU, else 0. What the model runs on is logged at start "
        "and shown by `/health` and `list_adapters`",
        metavar="N", shown_default="all on a GPU build, else 0", engine="gpu_layers",
    )  # fmt: skip
    threads: int | None = option(
        "the most llama.cpp threads. While other processes keep cores busy, fewer are used (about as many as the "
        "cores left free, re-measured every second): llama.cpp's threads wait for each other at spinning barriers, "
        "so one thread pushed off its core stalls them all. Measured in [docs/reliability.md](docs/reliability.md)",
        metavar="N", shown_default="cores, at most 8", engine="threads",
    )  # fmt: skip
    fixed_threads: bool = option(
        "always use `--threads` threads (e.g. on a machine reserved for loramux)", default=False
    )
    prefix_cache_cells: int | None = option(
        "KV cells that finished requests' prompts may keep in free sequence slots, so that a later request "
        "under the same adapter set whose prompt starts the same way (a long system prompt, few-shot examples) "
        "prefills only the rest; least recently used first out. 0 turns it off. Hits, misses and tokens saved "
        "are in `/metrics` and `loramux://stats`",
        metavar="N", shown_default="half the context's cells", engine="prefix_cache_cells",
    )  # fmt: skip
    flash_attention: bool = option(
        "use llama.cpp's flash attention on the CPU, with loramux's llama.cpp patch sending every query row down "
        "the tiled path whatever shares the step (stock llama.cpp picks a tiled, one-row or split path by row "
        "count, so outputs would depend on other requests; without the patch it stays off). GPU builds use "
        "llama.cpp's choice",
        default=True, engine="flash_attention",
    )  # fmt: skip
    queue_depth: int = option(
        "requests that may wait for a free sequence; past that, calls get an immediate busy error (HTTP 429 with "
        "`Retry-After` on the OpenAI routes)",
        metavar="N", engine="queue_depth",
    )  # fmt: skip
    request_timeout: float = option(
        "seconds a request may take, queue wait included (HTTP 504 on the OpenAI routes)",
        metavar="S", engine="request_timeout",
    )  # fmt: skip
    adapter_dirs: Annotated[list[Path] | None, NoDecode] = option(
        "directory agents may load LoRA adapters from; repeatable. Nothing outside these directories is ever "
        "opened on an agent's behalf",
        flag="--adapter-dir", metavar="DIR", shown_default="the project's `adapters/`", engine="adapter_dirs",
    )  # fmt: skip
    adapters: Annotated[dict[str, Path], NoDecode] = option(
        "load an adapter at start; repeatable. Operator-given, so any path is allowed. Environment: "
        "`name=path,name=path`; TOML: a table `[adapters]`",
        flag="--adapter", metavar="NAME=PATH", shown_default="–", default_factory=dict,
        engine="preload_adapters",
    )  # fmt: skip
    auto_load: bool = option(
        "a call naming an adapter that is not loaded loads it first from the adapter directories (`NAME.gguf`, or "
        "a PEFT / mlx-lm folder `NAME/`), confined as `load_adapter` is; that call waits, others do not. "
        "`--no-auto-load`: such calls are refused",
        engine="auto_load_adapters",
    )  # fmt: skip
    watch_adapters: bool = option(
        "watch the files and folders resident adapters were loaded from (polled each second); one that changes "
        "is loaded again as a new version: later calls get it, running calls finish on the old one",
        engine="watch_adapters",
    )  # fmt: skip
    max_loaded_adapters: int | None = option(
        "most adapters resident at once; loading another unloads the least recently used one that is neither "
        "pinned (`load_adapter` with `pin`, `--adapter`) nor used by a queued or running request",
        metavar="N", shown_default="no limit", engine="max_loaded_adapters",
    )  # fmt: skip
    adapter_memory_mb: float | None = option(
        "most megabytes of adapter weights resident at once (as loaded: a converted folder counts its F32 "
        "GGUF), evicting as `--max-loaded-adapters` does",
        metavar="MB", shown_default="no limit", engine="adapter_memory_mb",
    )  # fmt: skip
    adapter_cache_dir: Path | None = option(
        "where PEFT and mlx-lm folders' conversions to GGUF are kept, keyed by the source files' SHA-256, so a "
        "second load only reads the folder",
        metavar="DIR", shown_default="`~/.cache/loramux/converted-adapters`", engine="adapter_cache_dir",
    )  # fmt: skip
    chat_template: Path | None = option(
        "a Jinja chat template to use instead of the model's, e.g. to fix a model's template. Templates may move "
        "messages around; one that rewrites message text is refused per request (message text must never be read "
        "as control tokens)",
        metavar="FILE", shown_default="the model's own (from the GGUF)", engine="chat_template",
    )  # fmt: skip
    metrics_adapter_sets: int = option(
        "distinct adapter sets that get their own `adapter_set` label in `/metrics`; later ones share the label "
        '"other" (adapter names come from agents, so the label must stay bounded)',
        metavar="N", default=ADAPTER_SET_LABEL_CAP, ge=0, le=10_000,
    )  # fmt: skip
    shutdown_grace: float = option(
        "on SIGTERM or SIGINT (Ctrl-C): new calls and sessions are refused (\"shutting down\" tool error; HTTP 503 "
        "for a new session, an OpenAI request and `/health`), running calls get S seconds to finish, the rest end "
        "with a \"shutting down\" error, then the process exits 0. A second signal ends the running calls at once. "
        "A killed stdio client ends the server quietly (exit 0)",
        metavar="S", default=DEFAULT_GRACE_S, ge=0,
    )  # fmt: skip
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = option(
        "logs go to stderr only. On stdio nothing but JSON-RPC ever reaches stdout, llama.cpp's own logging included",
        metavar="L", default="INFO",
    )  # fmt: skip

    @model_validator(mode="after")
    def _ray_needs_http(self) -> Settings:
        ray = self.replicas is not None or self.ray_address is not None
        if ray and not self.http:
            raise ValueError("--replicas and --ray-address serve over HTTP: add --http (stdio is one process)")
        if not ray and (self.ingress_replicas != 1 or self.replica_threads != 1):
            raise ValueError("--ingress-replicas and --replica-threads apply to Ray Serve: add --replicas N")
        return self

    def ray_options(self) -> RayOptions | None:
        """The Ray backend's layout, or None to serve in this process."""
        if self.replicas is None and self.ray_address is None:
            return None
        return RayOptions(
            replicas=self.replicas or 1,
            address=self.ray_address,
            replica_threads=self.replica_threads,
            ingress_replicas=self.ingress_replicas,
        )

    @field_validator("allowed_hosts", "adapter_dirs", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("adapters", mode="before")
    @classmethod
    def _named_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = _split(value)
        if isinstance(value, list):
            pairs = [_named_path(item) if isinstance(item, str) else item for item in value]
            names = [name for name, _ in pairs]
            if len(set(names)) != len(names):
                raise ValueError("each adapter name may be given once")
            return dict(pairs)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flags (passed as init values) > LORAMUX_* environment (a file is added by `from_sources`)
        return (init_settings, env_settings)

    @classmethod
    def from_sources(cls, flags: dict[str, Any], config_file: Path | None = None) -> Settings:
        """Flags > LORAMUX_* environment > the TOML file (`config_file`, else $LORAMUX_CONFIG) > defaults."""
        path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
        if path is None:
            return cls(**flags)
        if not path.is_file():
            raise ValueError(f"--config: no such file: {path}")

        class WithFile(cls):  # type: ignore[valid-type,misc]
            @classmethod
            def settings_customise_sources(
                cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any, **_: Any
            ) -> tuple[PydanticBaseSettingsSource, ...]:
                return (init_settings, env_settings, TomlSource(settings_cls, toml_file=path))

        return WithFile(**flags)

    def engine_config(self) -> EngineConfig:
        """The engine's configuration: each option marked `engine=` sets that field (unset: the engine's
        default); the one inverted flag is --fixed-threads."""
        values: dict[str, Any] = {"adaptive_threads": not self.fixed_threads}
        for name, field in Settings.model_fields.items():
            target, value = _extra(field).get("engine"), getattr(self, name)
            if target is not None and value is not None:
                values[target] = tuple(value.items()) if isinstance(value, dict) else value
        try:
            return EngineConfig(**values)
        except ValidationError as exc:  # name the option, not the engine's field
            raise ValueError(_engine_errors(exc)) from None


def _named_path(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"expected NAME=PATH, got {value!r}")
    return name, Path(path)


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _engine_errors(exc: ValidationError) -> str:
    """The engine's errors, named by the options that set its fields."""
    option_of = {_extra(f).get("engine"): name for name, f in Settings.model_fields.items()}
    errors = exc.errors(include_url=False)
    for error in errors:
        field = str(error["loc"][0]) if error["loc"] else ""
        error["loc"] = (option_of.get(field, field),)
    return "\n".join(_problem(e) for e in errors)


def flag_of(name: str) -> str:
    field = Settings.model_fields.get(name)
    flag = _extra(field).get("flag") if field is not None else None
    return flag or "--" + name.replace("_", "-")


# -- the command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loramux",
        description="MCP tool server and OpenAI-compatible API for a resident local GGUF model. Every option can "
        f"also be set by an environment variable ({ENV_PREFIX}NAME) or in a TOML file (--config); flags win.",
        argument_default=argparse.SUPPRESS,  # only the flags given reach the settings: env and file fill the rest
    )
    p.add_argument("--config", metavar="FILE", help=f"TOML file of options (default: ${CONFIG_ENV})")
    for name, field in Settings.model_fields.items():
        extra = _extra(field)
        kwargs: dict[str, Any] = {"dest": name, "help": _help(name, field)}
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = extra.get("metavar")
            if name in ("allowed_hosts", "adapter_dirs", "adapters"):
                kwargs["action"] = "append"
        p.add_argument(flag_of(name), **kwargs)
    return p


def _help(name: str, field: FieldInfo) -> str:
    default = _shown_default(field)
    env = f"{ENV_PREFIX}{name.upper()}"
    return f"{field.description} (default: {default}; env: {env})".replace("%", "%%")


def _shown_default(field: FieldInfo) -> str:
    shown = _extra(field).get("shown_default")
    if shown is not None:
        return shown
    if field.annotation is bool:
        return "on" if field.default else "off"
    return str(field.default)


def load(argv: list[str] | None = None) -> Settings:
    """Settings from the command line, the environment and the TOML file; a clear error and exit 2 if
    any is wrong."""
    values = vars(build_parser().parse_args(argv))
    config = values.pop("config", None)
    try:
        settings = Settings.from_sources(values, Path(config) if config else None)
        settings.engine_config()  # the engine's own checks (files exist, KV pages), named by option
        return settings
    except ValidationError as exc:
        lines = [_problem(e) for e in exc.errors(include_url=False)]
        _refuse("\n".join(lines))
    except (ValueError, OSError) as exc:
        _refuse(str(exc))


def _problem(error: Any) -> str:
    where = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        return f"{where}: not an option (a config file's keys are the option names: see loramux --help)"
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    return f"{flag_of(where) if where else 'options'}: {message}"


def _refuse(message: str) -> NoReturn:
    sys.stderr.write(f"loramux: invalid configuration:\n{message}\n")
    raise SystemExit(2)


# -- the README's table ------------------------------------------------------------------------------


def options_table() -> str:
    rows = [
        "| flag | environment | default | what it does |",
        "|---|---|---|---|",
        f"| `--config FILE` | `{CONFIG_ENV}` | none | a TOML file of options, keys as the environment names without "
        "the prefix, lower case (`max_sequences = 16`); flags win over the environment, which wins over the file |",
    ]
    for name, field in Settings.model_fields.items():
        metavar = _extra(field).get("metavar")
        flag = flag_of(name) + (f" {metavar}" if metavar else "")
        rows.append(f"| `{flag}` | `{ENV_PREFIX}{name.upper()}` | {_shown_default(field)} | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(options_table())
