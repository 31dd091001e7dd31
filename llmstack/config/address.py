"""The stack's address: its default, and what a client on this machine connects to.

Stdlib only and separate from the schema, so ``llmstack status`` (which needs only URLs)
does not pay for the schema's dataclasses.
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 10101
"""The stack's address when models.ini names none: loopback, where opencode connects."""
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def client_host(bind: str) -> str:
    """The address a client on this machine uses for a bind address (a wildcard: loopback)."""
    return _WILDCARDS.get(bind, bind)


def url_for(host: str, port: int) -> str:
    """The base URL clients on this machine use for a stack bound to ``host:port``."""
    host = client_host(host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
