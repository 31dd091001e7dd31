"""The ASGI types every module of the swapper (and llmstack over it) speaks, in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
"""One request's (or the lifespan's) ASGI scope; layers keep their own keys in it."""
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
"""Raw header pairs, as ASGI and the upstream client carry them."""
