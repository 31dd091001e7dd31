"""What ``/v1/models`` and ``/api/profiles`` show for a config (pure functions).

Models keep llama-swap's fields: ``name``, ``description``, ``meta`` (the
model's ``metadata``, with ``${PORT}`` filled once the model has a port) and
``capabilities``. Aliases (and ``setParamsByID`` ids) are listed as their own
rows only when ``includeAliasesInList`` is on; selectors are listed unless
``unlisted``, peer models always.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .config import PORT_MACRO, SwapperConfig
from .selectors import NameRouter

_PORT = re.compile(re.escape(PORT_MACRO))


def fill_port(value: Any, port: int | None) -> Any:
    """``value`` with every ``${PORT}`` replaced by ``port`` (a lone one keeps the int)."""
    if port is None:
        return value
    if isinstance(value, str):
        return port if value == PORT_MACRO else _PORT.sub(str(port), value)
    if isinstance(value, dict):
        return {k: fill_port(v, port) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_port(v, port) for v in value]
    return value


def model_rows(config: SwapperConfig, running: frozenset[str],
               port_of: Callable[[str], int | None]) -> list[dict[str, Any]]:
    """One row per listed model, then its aliases (if listed), then selectors."""
    rows = []
    for spec in config.models.values():
        if spec.unlisted:
            continue
        base: dict[str, Any] = {
            "object": "model", "created": 0, "owned_by": "swapper",
            "name": spec.name or spec.id, "description": spec.description,
            "meta": fill_port(dict(spec.metadata), port_of(spec.id)),
            "status": "running" if spec.id in running else "stopped"}
        if spec.capabilities:
            base["capabilities"] = dict(spec.capabilities)
        rows.append({"id": spec.id, "aliases": list(spec.aliases), **base})
        if config.include_aliases_in_list:
            extra = [i for i in spec.filters.set_params_by_id if i != spec.id]
            rows += [{"id": alias, "alias_of": spec.id, **base}
                     for alias in (*spec.aliases, *extra)]
    for selector in config.selectors.values():
        if not selector.unlisted:
            rows.append({"id": selector.id, "object": "model", "created": 0,
                         "owned_by": "swapper", "name": selector.name or selector.id,
                         "description": selector.description, "meta": dict(selector.metadata),
                         "selector": {"strategy": selector.strategy,
                                      "targets": list(selector.targets)}})
    return rows


def profiles_payload(names: NameRouter) -> dict[str, Any]:
    """llama-swap's ``GET /api/profiles``: the active profile and every profile's pins."""
    profiles: Mapping[str, Any] = names.config.profiles
    return {"active": names.active_profile,
            "profiles": [{"name": p.name, "description": p.description,
                          "pins": {k: v or "" for k, v in p.pins.items()}}
                         for p in profiles.values()]}
