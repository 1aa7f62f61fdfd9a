"""The configuration schema: what a Ferryman YAML file may say, as frozen typed models.

Every knob has a default here and a line in ``docs/configuration.md``. Validation that needs
more than one field (a route with two handlers, a proxy naming an unknown upstream) lives in
the model validators so that errors point at the key that is wrong.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ferryman.config.base import Duration, Model, Size, beside_config, parse_hostport
from ferryman.config.forward import Forward


def split_scheme(address: str) -> tuple[str, str]:
    """``https://host:port`` into ("https", "host:port"); a bare address is "http"."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return "http", address
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{address!r}: the scheme is http or https")
    return scheme, rest.rstrip("/")


class HeaderEdits(Model):
    """Header changes: ``set`` replaces, ``add`` appends, ``remove`` deletes (by name)."""

    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)
    # Like nginx ``add_header ... always``: also on 4xx/5xx and on Ferryman's own errors.
    always: bool = True


class UpstreamServer(Model):
    address: str
    weight: int = Field(default=1, ge=1, le=1000)
    backup: bool = False
    max_fails: int = Field(default=1, ge=0)
    fail_timeout: Duration = 10.0

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        # ``https://host:port`` makes the connection TLS; a bare ``host:port`` is plain.
        parse_hostport(split_scheme(v)[1], 80)
        return v


RetryCondition = Literal["error", "timeout", "http_500", "http_502", "http_503", "http_504"]


def _default_retry_conditions() -> list[RetryCondition]:
    return ["error", "timeout"]


class Retry(Model):
    tries: int = Field(default=3, ge=1, le=20)
    timeout: Duration = 0.0  # total time for all tries; 0 = unbounded
    # When to try the next server (nginx's proxy_next_upstream). Not called ``on``: YAML
    # reads that key as a boolean.
    when: list[RetryCondition] = Field(default_factory=_default_retry_conditions)
    # Replay POST/PATCH/... after their body went out (nginx: non_idempotent). Off: safe.
    non_idempotent: bool = False


class UpstreamTls(Model):
    """TLS toward a group's ``https://`` servers (or all of them with ``enabled``)."""

    enabled: bool = False
    verify: bool = True
    # PEM bundle of the CAs to trust; the system's when unset.
    ca_file: str | None = None
    # Name sent by SNI and checked against the certificate; the server's host when unset.
    server_name: str | None = None
    # Client certificate for upstreams that ask for one (mutual TLS).
    cert: str | None = None
    key: str | None = None

    @field_validator("ca_file", "cert", "key")
    @classmethod
    def _beside_config(cls, v: str | None, info: ValidationInfo) -> str | None:
        return beside_config(v, info)

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both 'cert' and 'key'")
        return self


class Upstream(Model):
    servers: list[UpstreamServer] = Field(min_length=1)
    balance: Literal["round_robin", "least_conn", "hash", "random_two"] = "round_robin"
    # For ``balance: hash``: ``remote_addr``, ``uri``, ``header:NAME`` or ``cookie:NAME``.
    hash_key: str = "remote_addr"
    keepalive: int = Field(default=32, ge=0)
    keepalive_timeout: Duration = 60.0
    keepalive_requests: int = Field(default=1000, ge=1)
    retry: Retry = Retry()
    tls: UpstreamTls = UpstreamTls()
    # ``http/1.1`` pools; ``h2c``/``h2`` multiplex streams over HTTP/2 (cleartext or TLS),
    # which gRPC needs for its trailers.
    protocol: Literal["http/1.1", "h2c", "h2"] = "http/1.1"

    @field_validator("hash_key")
    @classmethod
    def _hash_key(cls, v: str) -> str:
        if v in ("remote_addr", "uri") or re.match(r"^(header|cookie):[!-~]+$", v):
            return v
        raise ValueError("hash_key is remote_addr, uri, header:NAME or cookie:NAME")

    @model_validator(mode="after")
    def _has_primary(self) -> Upstream:
        if all(s.backup for s in self.servers):
            raise ValueError("an upstream needs at least one server that is not a backup")
        return self


class Timeouts(Model):
    connect: Duration = 60.0
    send: Duration = 60.0
    read: Duration = 60.0


class WebSocket(Model):
    enabled: bool = True
    idle_timeout: Duration = 3600.0


class ProxyHandler(Model):
    upstream: str | None = None
    url: str | None = None
    # ``pass`` keeps the client's Host; ``upstream`` uses the peer's host:port
    # (http-proxy's changeOrigin); any other value is sent as is.
    host: str = "pass"
    timeouts: Timeouts = Timeouts()
    websocket: WebSocket = WebSocket()
    # Add RFC 7239 ``Forwarded`` besides the X-Forwarded-* family.
    forwarded: bool = False
    x_forwarded: bool = True
    # Response bytes held for a slow client before the upstream is paused (nginx's
    # proxy_buffers): the upstream connection is freed sooner. 0 keeps the 64k default.
    buffer: Size = 0

    @model_validator(mode="after")
    def _one_target(self) -> ProxyHandler:
        if (self.upstream is None) == (self.url is None):
            raise ValueError("proxy needs exactly one of 'upstream' or 'url'")
        if self.url is not None and not re.match(r"^https?://[^/]+/?$", self.url):
            raise ValueError("url must look like http://host:port or https://host:port")
        return self


class RespondHandler(Model):
    status: int = Field(default=200, ge=100, le=599)
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = Field(default_factory=dict)


class RedirectHandler(Model):
    # ``$scheme``, ``$host``, ``$request_uri``, ``$uri``, ``$args``, ``$server_port`` are
    # expanded per request.
    to: str
    status: Literal[301, 302, 303, 307, 308] = 301


class StaticHandler(Model):
    """Files from a directory. ``root`` appends the whole URL path to the directory (nginx
    ``root``); ``alias`` replaces the route's prefix with it (nginx ``alias``)."""

    root: str | None = None
    alias: str | None = None
    index: list[str] = Field(default_factory=lambda: ["index.html"])
    # ``Expires`` and ``Cache-Control: max-age``; unset sends neither.
    expires: Duration | None = None
    # Added to Cache-Control, such as ``public, immutable``.
    cache_control: str | None = None
    etag: bool = True
    last_modified: bool = True
    # Extension (``.ext``) to content type, over Python's ``mimetypes`` table.
    types: dict[str, str] = Field(default_factory=dict)
    default_type: str = "application/octet-stream"
    # Appended to text/* types (and JavaScript, JSON) that name no charset.
    charset: str | None = "utf-8"
    # Symlinks whose target lies outside the directory are refused unless this is set.
    follow_outside_symlinks: bool = False
    # Files and directories whose name starts with "." (.git, .env) are not served.
    dotfiles: bool = False
    # Off: a directory without an index file is 403; on: an HTML listing.
    listing: bool = False
    # Send large files with sendfile(2) where the transport allows it.
    sendfile: bool = True

    @field_validator("root", "alias")
    @classmethod
    def _beside_config(cls, v: str | None, info: ValidationInfo) -> str | None:
        return beside_config(v, info)

    @model_validator(mode="after")
    def _one_dir(self) -> StaticHandler:
        if (self.root is None) == (self.alias is None):
            raise ValueError("static needs exactly one of 'root' or 'alias'")
        return self


Coding = Literal["br", "zstd", "gzip"]
_CODINGS: tuple[Coding, ...] = ("br", "zstd", "gzip")


class Compression(Model):
    """Compression of response bodies, negotiated by ``Accept-Encoding``."""

    enabled: bool = True
    # Media types (without parameters) to compress; ``text/*`` matches a whole family.
    types: list[str] = Field(
        default_factory=lambda: [
            "text/plain",
            "text/css",
            "text/html",
            "text/xml",
            "text/javascript",
            "application/json",
            "application/javascript",
            "application/xml",
            "image/svg+xml",
        ]
    )
    # Responses with a smaller Content-Length go out as they are; unknown lengths compress.
    min_length: Size = 1000
    # In the server's order of preference when the client rates several equally.
    algorithms: list[Coding] = Field(default_factory=lambda: list(_CODINGS))
    # Per algorithm: gzip 1-9 (default 5), br 0-11 (4), zstd 1-22 (3); the defaults favour
    # speed, as compression happens on every response.
    level: dict[Coding, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _levels(self) -> Compression:
        bounds = {"gzip": (1, 9), "br": (0, 11), "zstd": (1, 22)}
        for name, value in self.level.items():
            low, high = bounds[name]
            if not low <= value <= high:
                raise ValueError(f"level.{name} is between {low} and {high}")
        return self


class Rewrite(Model):
    """Path rewrite before proxying: ``strip_prefix``, ``replace_prefix`` or ``regex``."""

    strip_prefix: bool = False
    replace_prefix: str | None = None
    regex: str | None = None
    replacement: str = ""

    @model_validator(mode="after")
    def _one_kind(self) -> Rewrite:
        kinds = sum([self.strip_prefix, self.replace_prefix is not None, self.regex is not None])
        if kinds != 1:
            raise ValueError("rewrite needs exactly one of strip_prefix, replace_prefix, regex")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"bad regex: {e}") from None
        return self


class AccessLog(Model):
    enabled: bool = True
    # ``combined``, ``json``, or a template of ``$variables`` such as ``$method $uri $status``.
    format: str = "combined"
    path: str = "stdout"


class PluginRef(Model):
    """A filter class ``package.module:ClassName`` and the options given to its constructor."""

    use: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("use")
    @classmethod
    def _use(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", v):
            raise ValueError("plugin 'use' must look like package.module:ClassName")
        return v


class Route(Model):
    path: str = "/"
    match: Literal["prefix", "exact", "regex"] = "prefix"
    methods: list[str] | None = None
    rewrite: Rewrite | None = None
    proxy: ProxyHandler | None = None
    respond: RespondHandler | None = None
    redirect: RedirectHandler | None = None
    static: StaticHandler | None = None
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    access_log: bool = True
    max_body_size: Size | None = None
    # Overrides the server's ``compression`` for this route.
    compression: Compression | None = None
    plugins: list[PluginRef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_handler(self) -> Route:
        handlers = [
            h for h in (self.proxy, self.respond, self.redirect, self.static) if h is not None
        ]
        if len(handlers) != 1:
            raise ValueError(
                "a route needs exactly one handler: proxy, respond, redirect or static"
            )
        if self.static is not None and self.static.alias is not None and self.match == "regex":
            raise ValueError("static 'alias' needs a prefix or exact path; use 'root'")
        if self.match == "regex":
            try:
                re.compile(self.path)
            except re.error as e:
                raise ValueError(f"bad regex in path: {e}") from None
        elif not self.path.startswith("/"):
            raise ValueError("path must start with '/'")
        return self


class Tls(Model):
    """TLS on a server's listeners. The certificate answers for the server's ``server_names``
    by SNI; the default server's certificate answers everything else. The protocol settings
    of the default (else first) TLS server on an address hold for the whole listener."""

    cert: str
    key: str
    # Make a development certificate (signed by the local CA of ``ferryman cert``) for the
    # server names when the files are missing, so an example runs from a fresh clone.
    auto_create: bool = False
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    max_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.3"
    # OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults): ECDHE with
    # AEAD only, Mozilla's "intermediate" profile.
    ciphers: str = (
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    )
    # Offered by ALPN, in order of preference; ``h2`` only when ``http2.enabled``.
    alpn: tuple[Literal["h2", "http/1.1"], ...] = ("h2", "http/1.1")
    session_tickets: bool = True
    # TLS 1.3 tickets sent after a full handshake (each one resumes one later connection).
    session_ticket_count: int = Field(default=2, ge=0, le=16)

    @field_validator("cert", "key")
    @classmethod
    def _beside_config(cls, v: str, info: ValidationInfo) -> str:
        return beside_config(v, info) or v

    @model_validator(mode="after")
    def _versions(self) -> Tls:
        if self.min_version > self.max_version:
            raise ValueError("min_version is above max_version")
        return self


class Http2(Model):
    """HTTP/2 toward clients: over TLS by ALPN, and optionally h2c by prior knowledge."""

    enabled: bool = True
    # Cleartext HTTP/2 with prior knowledge on plain listeners (curl --http2-prior-knowledge).
    h2c: bool = False
    max_concurrent_streams: int = Field(default=128, ge=1, le=10000)
    max_header_list_size: Size = 65536
    # Receive windows: per stream and for the whole connection. Large, so one big upload is
    # not throttled by round trips; a paused handler stops acknowledging, which bounds memory.
    initial_window_size: Size = 1 << 20
    connection_window_size: Size = 16 << 20
    max_frame_size: Size = 16384
    # Abuse limits, per connection and second; over them the connection gets GOAWAY
    # ENHANCE_YOUR_CALM and is closed (rapid reset, CVE-2023-44487; SETTINGS/PING floods).
    max_resets_per_second: int = Field(default=200, ge=1)
    max_control_frames_per_second: int = Field(default=200, ge=1)
    max_streams_per_connection: int = Field(default=100000, ge=1)
    idle_timeout: Duration = 180.0

    @field_validator("initial_window_size", "connection_window_size")
    @classmethod
    def _window(cls, v: int) -> int:
        if not 65535 <= v <= 2**31 - 1:
            raise ValueError("a window is between 64k and 2g-1")
        return v

    @field_validator("max_frame_size")
    @classmethod
    def _frame(cls, v: int) -> int:
        if not 16384 <= v <= 2**24 - 1:
            raise ValueError("max_frame_size is between 16k and 16m-1")
        return v


class Server(Model):
    listen: list[str] = Field(min_length=1)
    server_names: list[str] = Field(default_factory=list)
    default: bool = False
    routes: list[Route] = Field(default_factory=list)
    response_headers: HeaderEdits | None = None
    request_headers: HeaderEdits | None = None
    plugins: list[PluginRef] = Field(default_factory=list)
    # Body of Ferryman's own errors (404 no route, 502, 504): ``json`` or ``html``.
    error_format: Literal["json", "html"] = "json"
    access_log: AccessLog | None = None
    tls: Tls | None = None
    # Response compression for every route of the server (a route's own block wins).
    compression: Compression | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_hostport(item)
        return v


class Limits(Model):
    max_request_line: Size = 8192
    max_header_size: Size = 32768
    max_headers: int = 100
    max_body_size: Size = 1 << 20
    max_connections: int = 10000
    client_header_timeout: Duration = 60.0
    client_body_timeout: Duration = 60.0
    # A client that takes no response bytes for this long is disconnected.
    send_timeout: Duration = 60.0
    keepalive_timeout: Duration = 75.0
    keepalive_requests: int = 1000


class Log(Model):
    access: AccessLog = AccessLog()
    # Error log level: debug, info, warning, error.
    level: Literal["debug", "info", "warning", "error"] = "info"
    error_path: str = "stderr"


class Config(Model):
    workers: int | Literal["auto"] = "auto"
    shutdown_timeout: Duration = 30.0
    # Proxies whose X-Forwarded-For / X-Real-IP we believe (addresses or CIDR networks).
    trusted_proxies: list[str] = Field(default_factory=list)
    limits: Limits = Limits()
    log: Log = Log()
    http2: Http2 = Http2()
    upstreams: dict[str, Upstream] = Field(default_factory=dict)
    servers: list[Server] = Field(default_factory=list)
    # The forward proxy (HTTP, CONNECT, SOCKS5): see ``config/forward.py``.
    forward: Forward | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for item in v:
            ipaddress.ip_network(item, strict=False)
        return v

    @model_validator(mode="after")
    def _references(self) -> Config:
        for si, server in enumerate(self.servers):
            for ri, route in enumerate(server.routes):
                up = route.proxy.upstream if route.proxy else None
                if up is not None and up not in self.upstreams:
                    raise LocatedError(
                        ("servers", si, "routes", ri, "proxy", "upstream"),
                        f"unknown upstream {up!r}",
                    )
        tls_of: dict[str, bool] = {}
        for si, server in enumerate(self.servers):
            for address in server.listen:
                has = server.tls is not None
                if tls_of.setdefault(address, has) != has:
                    raise LocatedError(
                        ("servers", si, "tls"),
                        f"{address}: every server on one address is TLS, or none is",
                    )
        return self


class LocatedError(ValueError):
    """A cross-field error that knows which key it is about."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
