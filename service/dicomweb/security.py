"""Who may call the DICOMweb service, and from where: bearer tokens, binding, CORS, UIDs in paths.

* Bearer tokens (RFC 6750 §2.1) from the same store as the gRPC server (``grpc.tokens``, checked by
  :func:`service.inference.auth.check_token` in constant time); no tokens configured: open.
* Without tokens the service binds only a loopback address unless ``dicomweb.allow_unauthenticated_remote``
  says otherwise: a hospital network is opened on purpose, by configuration.
* UIDs in paths are checked against the PS3.5 §9.1 grammar before they reach a query or a path, so
  ``..``, ``/`` or anything else that is not digits and dots is refused (400).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Awaitable, Callable

from service.archive.uids import InvalidUID, validate_uid
from service.config import Config, ConfigError
from service.dicomweb.errors import BadRequest
from service.inference.auth import check_token

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(cfg: Config) -> None:
    """Refuse to listen beyond loopback without authentication, unless explicitly allowed."""
    web = cfg.dicomweb
    if is_loopback(web.bind) or tokens_of(cfg) or web.allow_unauthenticated_remote:
        return
    raise ConfigError(
        f"dicomweb.bind {web.bind!r} is not a loopback address and no bearer tokens are configured (grpc.tokens): "
        "set tokens, or dicomweb.allow_unauthenticated_remote = true to serve without authentication"
    )


def tokens_of(cfg: Config) -> list[bytes]:
    return [t.encode() for t in cfg.grpc.tokens if t]


def path_uid(value: str, attribute: str) -> str:
    """A UID taken from a URL path, validated (PS3.5 §9.1); BadRequest otherwise."""
    try:
        return validate_uid(value, attribute)
    except InvalidUID as exc:
        raise BadRequest(str(exc)) from None


class BearerTokenMiddleware:
    """ASGI middleware answering 401 (with ``WWW-Authenticate: Bearer``, RFC 6750 §3) to unauthenticated calls.

    CORS preflight requests (OPTIONS with ``Access-Control-Request-Method``) pass: browsers never send
    credentials on them, and they reveal nothing. The capabilities statement (OPTIONS without it) is
    protected like everything else.
    """

    def __init__(self, app: ASGIApp, tokens: list[bytes]):
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not self.tokens:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope.get("method") == "OPTIONS" and "access-control-request-method" in headers:
            await self.app(scope, receive, send)
            return
        problem = check_token(headers.get("authorization"), self.tokens)
        if problem is None:
            await self.app(scope, receive, send)
            return
        problem = problem.replace("metadata", "header")
        body = (problem + "\n").encode()
        error = "invalid_request" if "authorization" not in headers else "invalid_token"
        await send({
            "type": "http.response.start", "status": 401,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", f'Bearer realm="synthpacs", error="{error}"'.encode()),
            ],
        })
        await send({"type": "http.response.body", "body": body})
