"""Tracing with OpenTelemetry, when the `otel` extra is installed and the SDK's own settings ask
for it (`OTEL_EXPORTER_OTLP_ENDPOINT`): a span per request continuing the caller's
`traceparent`, child spans for the database writes of a send and the provider call, and a span
per webhook attempt, whose `traceparent` the team's receiver gets.

Off, nothing of OpenTelemetry is imported: `span()` hands back one shared no-op context and
`traceparent()` is None, so the send path pays a function call. The spans are made here rather
than by the aiohttp instrumentation packages because those record the request's path and query
(`/dlr/{token}`, a drop-in client's `password=`) and would send the provider our trace ids; these
record the route's template and the upstream's host only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from importlib import metadata
from typing import Any

from aiohttp import web

# Set by start(): the SDK's tracer and provider, and the API's propagation functions.
_tracer: Any = None
_provider: Any = None
_inject: Callable[..., None] | None = None
_extract: Callable[..., Any] | None = None
_kinds: dict[str, Any] = {}
NOOP: AbstractContextManager[None] = contextlib.nullcontext()  # a span when tracing is off

ENDPOINT_SETTINGS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
EXTRA_MISSING = (
    "OTEL_EXPORTER_OTLP_ENDPOINT is set, but tracing needs the otel extra:"
    " pip install 'sms-gateway[otel]'"
)


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the OpenTelemetry SDK's own settings ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_SETTINGS)


def installed() -> bool:
    """Whether the otel extra is installed (imports nothing of it)."""
    try:
        metadata.version("opentelemetry-sdk")
        metadata.version("opentelemetry-exporter-otlp-proto-http")
    except metadata.PackageNotFoundError:
        return False
    return True


def start() -> None:
    """Export spans over OTLP/HTTP in batches from a thread of the SDK's, configured by the
    SDK's own OTEL_* settings (endpoint, headers, service name, sampler, batch delay)."""
    global _tracer, _provider, _inject, _extract
    from opentelemetry import propagate, trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    version = metadata.version("sms-gateway")
    resource = Resource.create({SERVICE_VERSION: version})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        # OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) unset: name it after the package
        resource = resource.merge(Resource({SERVICE_NAME: "sms-gateway"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("gateway", version)
    _inject, _extract = propagate.inject, propagate.extract
    _kinds.update(
        server=trace.SpanKind.SERVER,
        client=trace.SpanKind.CLIENT,
        internal=trace.SpanKind.INTERNAL,
    )


def stop() -> None:
    """Export what is left and stop."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def active() -> bool:
    """Whether spans are being made."""
    return _tracer is not None


def span(
    name: str,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    parent: str | None = None,
) -> AbstractContextManager[Any]:
    """A span around a block, the current one's child (or `parent`'s, a stored traceparent);
    a shared no-op when tracing is off."""
    if _tracer is None:
        return NOOP
    context = _context_of(parent) if parent else None
    return _tracer.start_as_current_span(  # type: ignore[no-any-return]
        name, context=context, kind=_kinds[kind], attributes=attributes
    )


def traceparent() -> str | None:
    """The current span as a W3C traceparent (to store with what it caused), or None."""
    if _inject is None:
        return None
    carrier: dict[str, str] = {}
    _inject(carrier)
    return carrier.get("traceparent")


def inject(headers: dict[str, str]) -> None:
    """Add the current span's traceparent (and tracestate) to outgoing headers."""
    if _inject is not None:
        _inject(headers)


def failed(current: Any, description: str) -> None:
    """Mark a span as failed, saying why (never with a secret in `description`)."""
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, description))


def _context_of(value: str) -> Any:
    assert _extract is not None
    return _extract({"traceparent": value})


@contextlib.contextmanager
def _server_span(request: web.Request) -> Iterator[Any]:
    assert _tracer is not None and _extract is not None
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
    with _tracer.start_as_current_span(
        f"{request.method} {route}",
        context=_extract(request.headers),
        kind=_kinds["server"],
        attributes={"http.request.method": request.method, "http.route": route},
    ) as current:
        yield current


@web.middleware
async def middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The request's span (outermost, so it sees the answer the error middleware made)."""
    with _server_span(request) as current:
        response = await handler(request)
        current.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            failed(current, f"HTTP {response.status}")
        return response
