"""Who may use the server: API keys, and without one, only local pages and local names.

With no API key configured (the default) any web page the user opens could
otherwise drive the stack: a cross-origin "simple" POST needs no preflight,
and DNS rebinding points a foreign name at 127.0.0.1. So, with no key:

* a request whose ``Host`` is not ``localhost``, ``127.0.0.1``, ``[::1]``, the
  bound host or the address the connection arrived on (with the listening
  port, when a port is given) is refused with 403;
* a request carrying an ``Origin`` other than the server's own (``Host``) is
  refused with 403, unless that origin is listed in the CORS origins.

With keys, every route but ``/health`` (and the page, ``/ui``) needs one:
``Authorization: Bearer <key>`` (OpenAI and llama-swap clients) or ``x-api-key:
<key>`` (Anthropic's); a bare ``Authorization: <key>`` is no key. CORS headers are
sent only to the configured origins; an ``OPTIONS`` preflight is 204 for them and
405 otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError
from .types import Scope

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})
CORS_METHODS = "GET, POST, HEAD, OPTIONS"
CORS_MAX_AGE = "600"


def header_bytes(scope: Scope, name: bytes) -> bytes:
    """The first value of a (lower-case) request header, b"" when absent."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return b""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (binding these needs no key)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


ALLOW_NETWORK_FLAG = "--allow-unauthenticated-network"


def exposure_check(host: str, keyed: bool, allowed: bool) -> tuple[str, bool]:
    """(message, fatal) for listening on ``host``: ("", False) when loopback or keyed.

    Without a key a non-loopback bind is refused unless :data:`ALLOW_NETWORK_FLAG`
    was given; then the message is a warning naming the risk.
    """
    if keyed or is_loopback(host):
        return "", False
    if not allowed:
        return (f"refusing to listen on {host} with no API key: anyone on the network could "
                f"run models and stop them; set an API key, or pass {ALLOW_NETWORK_FLAG} "
                "to accept that risk"), True
    return (f"listening on {host} with no API key ({ALLOW_NETWORK_FLAG}): anyone who can reach "
            "it can run models and stop them"), False


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated CORS origins (``*`` for any), without trailing slashes."""
    return tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())


def split_host(value: str) -> tuple[str, int | None]:
    """``name[:port]`` or ``[v6][:port]`` as (lower-case name, port or None); ("", None) if bad."""
    if value.startswith("["):
        name, closed, rest = value[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            return "", None
        port = rest[1:]
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:
        name, port = value, ""
    if port and not port.isdigit():
        return "", None
    return name.lower(), int(port) if port else None


def without_credentials(headers: list[tuple[bytes, bytes]],
                        keys: Iterable[str]) -> list[tuple[bytes, bytes]]:
    """Headers to forward upstream: the stack's own key (when keys are set) never goes on."""
    if not tuple(keys):
        return headers
    return [(k, v) for k, v in headers if k.lower() not in CREDENTIAL_HEADERS]


def _given_key(scope: Scope) -> bytes:
    """The key of ``Authorization: Bearer <key>``, else of ``x-api-key`` (a bare
    ``Authorization: <key>``, without a scheme, is no key: 401)."""
    auth = header_bytes(scope, b"authorization")
    bearer = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
    return bearer or header_bytes(scope, b"x-api-key").strip()


@dataclass(frozen=True)
class FrontDoor:
    """The admission policy; ``bound_host`` is the address the server listens on."""

    bound_host: str = "127.0.0.1"
    cors_origins: tuple[str, ...] = ()
    """Origins allowed cross-origin access (``*`` for any); empty means no CORS."""
    _admitted_hosts: set[tuple[bytes, Any]] = field(default_factory=set, compare=False, repr=False)

    def cors_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The CORS response headers for this request's Origin ([] if it is not allowed)."""
        if not self.cors_origins:
            return []
        origin = header_bytes(scope, b"origin")
        if not origin or not ("*" in self.cors_origins
                              or origin.decode("latin-1") in self.cors_origins):
            return []
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"*")]

    def preflight_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """Headers of a 204 answer to an allowed CORS preflight."""
        asked = header_bytes(scope, b"access-control-request-headers")
        return [(b"access-control-allow-methods", CORS_METHODS.encode()),
                (b"access-control-allow-headers", asked or b"authorization, content-type"),
                (b"access-control-max-age", CORS_MAX_AGE.encode())]

    def admit(self, scope: Scope, keys: Iterable[str],
              public: frozenset[str] = frozenset({"/health"})) -> None:
        """Raise 401/403 unless this request may be served (preflights and ``public`` paths
        skip the key check)."""
        keys = tuple(keys)
        if not keys:
            self._check_local(scope)
        elif scope["path"] not in public and scope["method"] != "OPTIONS":
            given = _given_key(scope)
            if not any(hmac.compare_digest(given, key.encode()) for key in keys):
                raise ApiError(401, "missing or wrong API key")

    def _check_local(self, scope: Scope) -> None:
        host = origin = b""
        for key, value in scope["headers"]:
            if key == b"host" and not host:
                host = value
            elif key == b"origin" and not origin:
                origin = value
        server = tuple(scope.get("server") or ("", None))
        if host and (host, server) not in self._admitted_hosts:
            self._check_host(host.decode("latin-1"), server)
            self._admitted_hosts.add((host, server))  # bounded: local names x ports
        if origin and origin.partition(b"://")[2].lower() != host.lower() \
                and not self.cors_headers(scope):
            raise ApiError(403, f"cross-origin request from {origin.decode('latin-1')!r} refused: "
                                "with no API key only the server's own pages and the configured "
                                "CORS origins may call it", "forbidden_origin")

    def _check_host(self, host: str, server: tuple[Any, Any]) -> None:
        name, port = split_host(host)
        names = LOOPBACK_HOSTS | {self.bound_host.lower().strip("[]"), str(server[0]).lower()}
        if name not in names or (port is not None and port != server[1]):
            raise ApiError(403, f"Host {host!r} is not this server's: with no API key only "
                                "local names are served (DNS rebinding protection)",
                           "forbidden_host")
