"""Who may run beside whom, and which name reaches which model: ``routing`` (or the legacy
top-level ``matrix`` / ``groups``), the fifo ``priority``, ``selectors`` and ``profiles``.

A group member, selector target, profile pin or priority naming an undefined model is
reported and ignored (llama-swap's own examples are only illustrative there)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..config import ConfigError, Group, Matrix, ModelSpec, Profile, Selector, SwapperConfig
from ..solver import compile_plan
from .source import Source, YamlPath

_STRATEGIES = ("warm", "pin", "spillover")


def residency(src: Source, top: Mapping[str, Any], models: Mapping[str, ModelSpec]
              ) -> tuple[Matrix | None, tuple[Group, ...], YamlPath]:
    """(matrix, groups, path of their parent) from legacy keys or ``routing``."""
    routing = src.section(top.get("routing"), ("routing",), {"router", "scheduler"})
    scheduler = src.section(routing.get("scheduler"), ("routing", "scheduler"), {"use", "settings"})
    if scheduler.get("use", "fifo") != "fifo":
        raise src.error(("routing", "scheduler", "use"), "the only scheduler is fifo")
    router = src.section(routing.get("router"), ("routing", "router"), {"use", "settings"})
    base: YamlPath = ("routing", "router", "settings")
    settings = src.section(router.get("settings"), base, {"groups", "matrix"})
    legacy = top.get("matrix") is not None or bool(top.get("groups"))
    modern = router.get("use") or settings.get("matrix") is not None or settings.get("groups")
    if legacy and modern:
        raise src.error(
            ("routing",),
            "cannot be used with the legacy top-level 'matrix'/'groups' keys; "
            "move them under routing.router.settings",
        )
    if legacy:
        return _matrix(src, top.get("matrix"), ("matrix",)), _groups(src, top, (), models), ()
    use = router.get("use") or "group"
    if use not in ("group", "matrix"):
        raise src.error(("routing", "router", "use"), f"unknown router {use!r}")
    unused = "groups" if use == "matrix" else "matrix"
    if settings.get(unused):
        src.report((*base, unused), f"unused because routing.router.use is {use}, ignored")
    if use == "group":
        return None, _groups(src, settings, base, models), base
    if settings.get("matrix") is None:
        raise src.error((*base, "matrix"), "required when routing.router.use is matrix")
    return _matrix(src, settings["matrix"], (*base, "matrix")), (), base


def _matrix(src: Source, value: Any, path: YamlPath) -> Matrix | None:
    if value is None:
        return None
    raw = src.section(value, path, {"vars", "evict_costs", "sets"})

    def table(key: str, parse: Callable[[Any, YamlPath], Any]) -> dict[str, Any]:
        entries = src.mapping(raw.get(key), (*path, key))
        return {name: parse(entry, (*path, key, name)) for name, entry in entries.items()}

    return Matrix(
        vars=table("vars", src.string),
        evict_costs=table("evict_costs", src.count),
        sets=table("sets", src.string),
    )


def _groups(src: Source, parent: Mapping[str, Any], base: YamlPath,
            models: Mapping[str, ModelSpec]) -> tuple[Group, ...]:
    path = (*base, "groups")
    return tuple(
        _group(src, name, value, (*path, name), models)
        for name, value in src.mapping(parent.get("groups"), path).items()
    )


def _group(src: Source, name: str, value: Any, path: YamlPath,
           models: Mapping[str, ModelSpec]) -> Group:
    raw = src.section(value, path, {"swap", "exclusive", "persistent", "members"})
    defaults = {"swap": True, "exclusive": True, "persistent": False}
    flags = {k: src.boolean(raw.get(k, v), (*path, k)) for k, v in defaults.items()}
    members = src.strings(raw.get("members"), (*path, "members"))
    for i, member in enumerate(members):
        if member not in models:
            src.report((*path, "members", i), f"undefined model {member!r}, ignored")
    return Group(name, tuple(m for m in members if m in models), **flags)


def priority(src: Source, top: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, int]:
    """``routing.scheduler.settings.fifo.priority``, by model id."""
    path: YamlPath = ("routing", "scheduler", "settings")
    routing = top.get("routing") or {}
    settings = src.section((routing.get("scheduler") or {}).get("settings"), path, {"fifo"})
    fifo = src.section(settings.get("fifo"), (*path, "fifo"), {"priority"})
    ranks: dict[str, int] = {}
    for model, rank in src.mapping(fifo.get("priority"), (*path, "fifo", "priority")).items():
        where = (*path, "fifo", "priority", model)
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise src.error(where, f"expected a whole number, got {rank!r}")
        if model in names:
            ranks[names[model]] = rank
        else:
            src.report(where, f"undefined model {model!r}, ignored")
    return ranks


def selectors(src: Source, value: Any, names: Mapping[str, str]) -> dict[str, Selector]:
    """llama-swap's checks, except that undefined targets are warned and dropped."""
    found: dict[str, Selector] = {}
    entries = src.mapping(value, ("selectors",))
    for sel_id, raw in entries.items():
        path: YamlPath = ("selectors", sel_id)
        raw = src.section(raw, path, {"strategy", "targets", "settings", "name",
                                      "description", "unlisted", "metadata"})
        if sel_id in names:
            what = "model id" if names[sel_id] == sel_id else "model alias"
            raise src.error(path, f"name conflicts with {what} {sel_id!r}")
        strategy = raw.get("strategy")
        if strategy not in _STRATEGIES:
            raise src.error((*path, "strategy"), f"expected one of {', '.join(_STRATEGIES)}"
                            f", got {strategy!r}")
        targets = src.strings(raw.get("targets"), (*path, "targets"))
        if not targets:
            raise src.error((*path, "targets"), "must contain at least one entry")
        kept = []
        for i, target in enumerate(targets):
            if target in entries:
                raise src.error((*path, "targets", i),
                                f"references selector {target!r}; selectors do not chain")
            if target not in names:
                src.report((*path, "targets", i), f"undefined model {target!r}, ignored")
            else:
                kept.append(target)
        settings = src.section(raw.get("settings"), (*path, "settings"), {"spillover"})
        spillover = src.count(settings.get("spillover", 1), (*path, "settings", "spillover"))
        if spillover < 1:
            raise src.error((*path, "settings", "spillover"), "must be >= 1")
        found[sel_id] = Selector(
            sel_id, strategy, tuple(kept), spillover,
            src.string(raw.get("name") or "", (*path, "name")),
            src.string(raw.get("description") or "", (*path, "description")),
            src.boolean(raw.get("unlisted", False), (*path, "unlisted")),
            src.mapping(raw.get("metadata"), (*path, "metadata")))
    return found


def profiles(src: Source, value: Any, names: Mapping[str, str],
             known_selectors: Mapping[str, Selector]) -> dict[str, Profile]:
    found: dict[str, Profile] = {}
    for name, raw in src.mapping(value, ("profiles",)).items():
        path: YamlPath = ("profiles", name)
        if isinstance(raw, list):
            src.report(path, "legacy list syntax (llama-swap no longer supports it), "
                       "ignored; use description and pins")
            continue
        raw = src.section(raw, path, {"description", "pins"})
        pins: dict[str, str | None] = {}
        for pin, target in src.mapping(raw.get("pins"), (*path, "pins")).items():
            if target is None or target == "":
                pins[pin] = None
            elif str(target) in names or str(target) in known_selectors:
                pins[pin] = str(target)
            else:
                src.report((*path, "pins", pin), f"undefined model {target!r}, ignored")
        if not raw.get("pins"):
            raise src.error((*path, "pins"), "must contain at least one entry")
        found[name] = Profile(name, src.string(raw.get("description") or "",
                                               (*path, "description")), pins)
    return found


def check_plan(src: Source, config: SwapperConfig, base: YamlPath) -> None:
    """Compile the residency plan now so a bad matrix fails at load, at its key's line
    (``base``: the path of the matrix's or groups' parent)."""
    try:
        compile_plan(config)
    except ConfigError as exc:
        parts: YamlPath = tuple(exc.where.split(".")) if exc.where else ()
        if parts[:1] in (("matrix",), ("groups",)):
            parts = (*base, *parts)
        raise ConfigError(str(exc), src.location(parts)) from None
