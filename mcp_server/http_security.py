"""What guards every HTTP route: Host and Origin (DNS rebinding), an optional bearer token, a body limit.

The MCP SDK checks Host and Origin only on /mcp; here the same check (its TransportSecurityMiddleware)
runs before every route, /health included. The token is a static shared secret, compared in constant
time. The SDK's OAuth support (AuthSettings + TokenVerifier) requires an authorization server
(issuer_url), which an operator-issued static token does not have, so the spec's parts are done here:
the 401 is an RFC 6750 bearer challenge whose `resource_metadata` points at
/.well-known/oauth-protected-resource (RFC 9728), which names the resource and no authorization
server. Bodies are limited by the SDK's RequestBodyLimitMiddleware (a declared oversize body is
refused before it is read).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence

from mcp.server.transport_security import (
    RequestBodyLimitMiddleware,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
MAX_BODY_BYTES = 4 * 1024 * 1024
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
# Probes carry no token, and a client must read the resource metadata to learn how to authenticate.
OPEN_PATHS = frozenset({"/health", RESOURCE_METADATA_PATH, RESOURCE_METADATA_PATH + "/mcp"})


def _host_forms(host: str) -> list[str]:
    name = f"[{host}]" if ":" in host else host
    return [name, f"{name}:*"]


def transport_security(bind_host: str, allowed_hosts: Sequence[str] = ()) -> TransportSecuritySettings:
    """Which Host and Origin headers are accepted: loopback names on a loopback bind, else the bind
    address; plus --allowed-host names. A wildcard bind with no --allowed-host cannot know its names."""
    hosts = [*allowed_hosts]
    if bind_host in LOOPBACK_HOSTS:
        hosts += LOOPBACK_HOSTS
    elif bind_host not in WILDCARD_HOSTS:
        hosts.append(bind_host)
    if not hosts:
        logger.warning(
            "Host and Origin checks are off: the server listens on %r without --allowed-host; "
            "give each name clients use (e.g. --allowed-host myhost.example)",
            bind_host,
        )
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    forms = [form for h in dict.fromkeys(hosts) for form in _host_forms(h)]
    origins = [f"{scheme}://{form}" for form in forms for scheme in ("http", "https")]
    return TransportSecuritySettings(allowed_hosts=forms, allowed_origins=origins)


class HttpGuard:
    """ASGI middleware: Host/Origin on every route, then the bearer token (if set) off the open paths."""

    def __init__(self, app: ASGIApp, *, security: TransportSecuritySettings, token: str | None) -> None:
        self.app = app
        self._transport = TransportSecurityMiddleware(security)
        self._token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = await self._transport.validate_request(request)
        if refused is None and self._token is not None:
            if scope["path"] in (RESOURCE_METADATA_PATH, RESOURCE_METADATA_PATH + "/mcp"):
                refused = self._resource_metadata(request)
            elif scope["path"] not in OPEN_PATHS:
                refused = self._check_token(request)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _resource_metadata(request: Request) -> JSONResponse:
        """RFC 9728 protected resource metadata, as the MCP spec asks of a server that takes tokens. It
        names no authorization server: the token is issued by the operator, not by an OAuth flow."""
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {"resource": f"{base}/mcp", "bearer_methods_supported": ["header"], "resource_name": "loramux"}
        )

    def _check_token(self, request: Request) -> JSONResponse | None:
        assert self._token is not None
        header = request.headers.get("authorization")
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token):
            return None
        error = "invalid_token" if header else "invalid_request"
        description = "the bearer token is wrong" if header else "this server needs a bearer token"
        return JSONResponse(
            {"error": error, "error_description": description},
            status_code=401,
            headers={
                "WWW-Authenticate": f'Bearer realm="loramux", error="{error}", '
                f'resource_metadata="{str(request.base_url).rstrip("/")}{RESOURCE_METADATA_PATH}"'
            },
        )


def guarded(app: ASGIApp, *, bind_host: str, allowed_hosts: Sequence[str] = (), token: str | None = None) -> ASGIApp:
    if bind_host not in LOOPBACK_HOSTS and not token:
        logger.warning(
            "WARNING: serving on %r without --auth-token: anyone who can reach this address can use the "
            "model and load adapters. Set --auth-token (or LORAMUX_AUTH_TOKEN), or bind 127.0.0.1.",
            bind_host,
        )
    security = transport_security(bind_host, allowed_hosts)
    return RequestBodyLimitMiddleware(HttpGuard(app, security=security, token=token), MAX_BODY_BYTES)
