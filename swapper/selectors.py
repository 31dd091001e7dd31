"""llama-swap's request-name routing: profile pins, then selectors, then ids.

Order (llama-swap's): the active profile's pins rewrite the requested id (a
``None`` pin answers 404); a selector id becomes one of its targets; the
result is a model id, an alias, a ``setParamsByID`` id or a peer model id,
resolved by :meth:`SwapperConfig.resolve`. The strategies are pure functions
of the scheduler's status, so tests choose the state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Selector, SwapperConfig
from .errors import ApiError, shown
from .scheduler import Status

Resolve = Callable[[str], "str | None"]  # a model id for an id or alias, or None


@dataclass(frozen=True)
class Routed:
    """Where one request goes: ``model`` (a model id) asked for as ``requested``."""

    model: str
    requested: str
    params: Mapping[str, Any] = field(default_factory=dict)
    selector: str = ""


def strategy_pin(selector: Selector) -> str:
    """Always the first target."""
    return selector.targets[0]


def strategy_warm(selector: Selector, resolve: Resolve, status: Mapping[str, Status]) -> str:
    """The first ready target, else the first starting one, else the first."""
    for wanted in (Status.READY, Status.STARTING):
        for target in selector.targets:
            if status.get(resolve(target) or target) is wanted:
                return target
    return selector.targets[0]


class SpilloverTracker:
    """Requests in flight per (selector, target), reserved by :meth:`pick`."""

    def __init__(self) -> None:
        self.in_flight: Counter[tuple[str, str]] = Counter()
        self._turn = 0

    def pick(self, selector: Selector, resolve: Resolve, status: Mapping[str, Status]) -> str:
        """Fill busy targets up to ``spillover`` each, then start the next cold one.

        Targets stopping are skipped; a target without a process (a peer) is busy
        while it has requests. Ties between the least busy go round-robin.
        """
        active: list[str] = []
        cold: list[str] = []
        for target in selector.targets:
            state = status.get(resolve(target) or target)
            if state is Status.STOPPING:
                continue
            busy = self.in_flight[(selector.id, target)] > 0
            (active if busy or state in (Status.READY, Status.STARTING) else cold).append(target)
        if not active and not cold:
            raise ApiError(503, f"selector '{selector.id}' has no available spillover targets",
                           code="model_unavailable")
        if not active or (cold and self._least(selector, active) >= selector.spillover):
            chosen = cold[0]
        else:
            least = self._least(selector, active)
            tied = [t for t in active if self.in_flight[(selector.id, t)] == least]
            chosen = tied[self._turn % len(tied)]
            self._turn += 1
        self.in_flight[(selector.id, chosen)] += 1
        return chosen

    def _least(self, selector: Selector, targets: list[str]) -> int:
        return min(self.in_flight[(selector.id, t)] for t in targets)

    def release(self, selector_id: str, target: str) -> None:
        if self.in_flight[(selector_id, target)] > 0:
            self.in_flight[(selector_id, target)] -= 1


class NameRouter:
    """Resolves requested names for one config; holds the active profile."""

    def __init__(self, config: SwapperConfig) -> None:
        self.config = config
        self.active_profile: str | None = None
        self.spillover = SpilloverTracker()

    def set_profile(self, name: str | None) -> None:
        """Activate profile ``name`` (None: none); unknown names are a 404."""
        if name is not None and name not in self.config.profiles:
            raise ApiError(404, f"profile '{shown(name)}' not found")
        self.active_profile = name

    def route(self, name: str, status: Mapping[str, Status]) -> Routed:
        """Resolve ``name``; a spillover pick is reserved until :meth:`release`."""
        profile = self.config.profiles.get(self.active_profile or "")
        if profile is not None and name in profile.pins:
            pinned = profile.pins[name]
            if pinned is None:
                raise ApiError(404, f"model '{shown(name)}' is disabled by profile '{profile.name}'")
            name = pinned
        selector = self.config.selectors.get(name)
        chosen = name
        if selector is not None:
            if not selector.targets:
                raise ApiError(404, f"selector '{name}' has no defined targets")
            resolve = self.config.resolve
            if selector.strategy == "pin":
                chosen = strategy_pin(selector)
            elif selector.strategy == "warm":
                chosen = strategy_warm(selector, resolve, status)
            else:
                chosen = self.spillover.pick(selector, resolve, status)
        model = self.config.resolve(chosen) or chosen
        spec = self.config.models.get(model)
        params = spec.filters.set_params_by_id.get(chosen, {}) if spec is not None else {}
        return Routed(model, chosen, params, selector.id if selector is not None else "")

    def release(self, routed: Routed) -> None:
        """End a request :meth:`route` placed (only spillover picks hold anything)."""
        if routed.selector:
            self.spillover.release(routed.selector, routed.requested)
