"""llama-swap ``peers``: remote OpenAI-compatible servers as process-less models.

Each model ``m`` of peer ``p`` becomes the model id ``p/m``: no process, always
ready, proxied to the peer's URL with ``model`` rewritten to ``m`` and the
peer's ``apiKey`` sent as ``Authorization: Bearer`` and ``x-api-key`` (as
llama-swap does). A bare ``m`` also names it when exactly one peer has ``m``
and no local model or alias does (local ids win).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .config import Filters, ModelSpec, Timeouts


@dataclass(frozen=True)
class Peer:
    id: str
    proxy: str
    models: tuple[str, ...]
    api_key: str = ""
    timeouts: Timeouts = field(default_factory=Timeouts)
    filters: Filters = field(default_factory=Filters)


def peer_models(peers: Iterable[Peer], local_names: Mapping[str, str]) -> dict[str, ModelSpec]:
    """Model specs for every peer model, keyed by ``peer/model``."""
    peers = list(peers)
    owners = Counter(m for peer in peers for m in set(peer.models))
    specs: dict[str, ModelSpec] = {}
    for peer in peers:
        headers = {"Authorization": f"Bearer {peer.api_key}",
                   "x-api-key": peer.api_key} if peer.api_key else {}
        for model in peer.models:
            bare = owners[model] == 1 and model not in local_names
            specs[f"{peer.id}/{model}"] = ModelSpec(
                id=f"{peer.id}/{model}", proxy=peer.proxy.rstrip("/"), use_model_name=model,
                aliases=(model,) if bare and f"{peer.id}/{model}" != model else (),
                headers=headers, timeouts=peer.timeouts, filters=peer.filters,
                description=f"on peer {peer.id}")
    return specs

