"""Bearer-token authentication for the gRPC server (RFC 6750 §2.1, carried in ``authorization`` metadata).

Tokens come from ``grpc.tokens`` (the configuration file or ``SYNTHPACS_GRPC_TOKENS``). With no tokens
configured every call is let through. The health service is always open, so load balancers and
Kubernetes probes, which send no metadata, can check readiness; health reveals no data.

A call carrying more than one ``authorization`` entry is refused: which of them a proxy, a log or the
server would honour is ambiguous (RFC 6750 §2.1 allows one credential), and answers never quote them.
"""

from __future__ import annotations

import hmac
from typing import Callable, Iterable

import grpc

from service.inference import metrics
from service.logs import get_logger

log = get_logger("grpc")

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def check_token(value: str | None | list[str], tokens: Iterable[bytes]) -> str | None:
    """None when ``value`` (the authorization header, or every one the call carried) holds an accepted
    token, else why not."""
    if isinstance(value, list):
        if len(value) > 1:
            return f"the call carries {len(value)} 'authorization' metadata entries; send exactly one"
        value = value[0] if value else None
    if not value:
        return "this server requires authentication: send metadata 'authorization: Bearer <token>'"
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "the authorization metadata must read 'Bearer <token>'"
    presented = token.strip().encode()
    # Compare against every token in constant time, so timing reveals neither which nor how much matched.
    accepted = False
    for t in tokens:
        accepted |= hmac.compare_digest(presented, t)
    return None if accepted else "the bearer token was not accepted"


class BearerTokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, tokens: Iterable[str], open_prefixes: tuple[str, ...] = OPEN_PREFIXES):
        self._tokens = [t.encode() for t in tokens if t]
        if not self._tokens:
            raise ValueError("BearerTokenInterceptor needs at least one token")
        self._open = open_prefixes

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method or ""
        if method.startswith(self._open):
            return continuation(handler_call_details)
        given = [v for k, v in (handler_call_details.invocation_metadata or ()) if k.lower() == "authorization"]
        problem = check_token([v if isinstance(v, str) else v.decode("latin-1") for v in given], self._tokens)
        handler = continuation(handler_call_details)
        if problem is None or handler is None:
            return handler
        metrics.REJECTED.labels("unauthenticated").inc()
        metrics.REQUESTS.labels(method.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED.name).inc()
        log.warning("unauthenticated", method=method, reason=problem)
        return _deny(handler, problem)


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED without running it."""

    def unary(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def streaming(_request, context: grpc.ServicerContext):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
