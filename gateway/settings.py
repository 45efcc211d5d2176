"""Settings of the gateway (env `ECO2_*`); every limit is a named setting."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from eco2.services.runtime.settings import Endpoints, RuntimeSettings


class AuthMode(StrEnum):
    #: The gateway calls ext-authz `Check` itself for every request (one machine, `eco2 up`).
    EDGE = "edge"
    #: Istio's Envoy ran ext-authz before the request got here: trust its `x-eco2-*` headers.
    MESH = "mesh"


DEFAULT_METADATA = (
    "authorization",
    "traceparent",
    "tracestate",
    "x-request-id",
    "accept-language",
    "idempotency-key",
)


class GatewaySettings(RuntimeSettings, Endpoints):
    http_host: str = Field("127.0.0.1", description="address the gateway's HTTP server binds")
    http_port: int = Field(8080, ge=0, le=65535, description="gateway HTTP port (0 = any free port); `eco2 up` sets it")
    gateway_auth_mode: AuthMode = Field(
        AuthMode.EDGE, description="edge: call ext-authz Check per request; mesh: trust Envoy's x-eco2-* headers"
    )
    gateway_authz_timeout_s: float = Field(
        2.0, gt=0, description="deadline of one ext-authz Check call (fail closed when exceeded)"
    )
    gateway_routes: dict[str, str] = Field(
        default_factory=dict,
        description='extra upstreams by gRPC service or package prefix, JSON: {"eco2test.Probe": "127.0.0.1:7000"}; eco2.<svc>.v1 goes to ECO2_<SVC>_ADDR',
    )
    gateway_max_message_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="largest request message (frame) accepted from a browser; larger → RESOURCE_EXHAUSTED",
    )
    gateway_max_body_bytes: int = Field(
        12 * 1024 * 1024, ge=1024, description="largest JSON-route request body (image upload multipart included)"
    )
    gateway_body_timeout_s: float = Field(
        15.0, gt=0, description="time a client gets to send the whole request body (slow bodies are cut off with 408)"
    )
    gateway_send_timeout_s: float = Field(
        30.0, gt=0, description="time one write to a client may block (a client that stops reading is disconnected)"
    )
    gateway_max_timeout_s: float = Field(
        300.0, gt=0, description="upper bound of grpc-timeout / connect-timeout-ms a client may ask for"
    )
    gateway_default_timeout_s: float = Field(
        30.0, gt=0, description="upstream deadline of unary calls when the client sent none"
    )
    gateway_metadata_allowlist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METADATA),
        description="request headers passed to the upstream as gRPC metadata",
    )
    gateway_cors_origins: list[str] = Field(
        default_factory=list,
        description='origins allowed cross-origin, JSON list (same-origin is always allowed), e.g. ["http://localhost:5173"]',
    )
    gateway_cors_max_age_s: int = Field(600, ge=0, description="how long browsers may cache a CORS preflight")
    gateway_sse_keepalive_s: float = Field(15.0, gt=0, description="interval of SSE keepalive comments")
    gateway_sse_header_wait_s: float = Field(
        1.0,
        ge=0,
        description="how long SSE waits for the first upstream event before sending headers, so an early upstream error (e.g. a replay trimmed past the cursor) gets a real HTTP status; an unknown job is a 404 at once (GetJobState first)",
    )
    gateway_sse_feed_buffer_events: int = Field(
        4096,
        ge=16,
        description="events of one job kept by its shared upstream subscription for SSE clients that join late or lag (oldest half dropped past it)",
    )
    gateway_upload_chunk_bytes: int = Field(
        64 * 1024, ge=1024, description="chunk size of image uploads streamed to ImageService.Upload"
    )
    gateway_h2_max_concurrent_streams: int = Field(100, ge=1, description="HTTP/2 streams per client connection")
    gateway_keep_alive_s: float = Field(75.0, gt=0, description="idle HTTP keep-alive before the connection is closed")
    gateway_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="time an HTTP/1.1 client gets to send a request's headers (a slow client is cut off); the same timer bounds an idle keep-alive connection (the shorter of this and ECO2_GATEWAY_KEEP_ALIVE_S)",
    )
    gateway_max_header_bytes: int = Field(
        64 * 1024,
        ge=8192,
        le=16 * 1024 * 1024,
        description="largest HTTP/1.1 request head (request line and headers); larger → 431",
    )
    gateway_shutdown_grace_s: float = Field(5.0, ge=0, description="time open streams get after SIGTERM")
    gateway_tcp_user_timeout_s: float = Field(
        60.0,
        ge=0,
        description="kernel bound (TCP_USER_TIMEOUT) on unacknowledged data: a peer that stops reading is dropped after it (0 = off)",
    )
    gateway_backlog: int = Field(2048, ge=16, description="listen backlog of the HTTP socket")
    gateway_max_concurrent_requests: int = Field(
        65536,
        ge=16,
        description="requests (open streams and SSE clients included) one gateway process serves at once; more wait to be accepted",
    )
    # shared with the images service (same names, same env): the edge verifies what it signs
    images_url_secret: str = Field(
        "",
        description="HMAC secret of signed image URLs, the images service's (embedded: read from the data dir when unset)",
    )
    images_url_prefix: str = Field(
        "/images", pattern=r"^/[A-Za-z0-9/_\-]*$", description="path prefix of signed image URLs (the images service's)"
    )
