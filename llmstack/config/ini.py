"""models.ini: read and strictly validate it into frozen dataclasses.

The syntax is the stdlib ``configparser``'s (``;``/``#`` full-line comments,
``;`` inline comments after whitespace, ``=`` or ``:`` between key and value,
case-insensitive keys, indented continuation lines, no interpolation). A small
scanner reproduces those rules itself because configparser keeps no line
numbers and stops at the first duplicate; every problem in the file is
collected and raised together as one :class:`ModelsIniError`.

``[DEFAULT]`` holds only stack-wide keys, so the values a tier inherits from it
are never read per tier; tier keys belong in tier sections. The upstream
timeouts (``response_timeout``, ``idle_timeout``) and ``session_cache`` are the
exception: set in ``[DEFAULT]`` for every tier, and per tier to override it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from swapper.small_files import CONFIG_LIMIT, read_small

from ..errors import UserError
from .keys import (
    DEFAULT_KEYS,
    KEY_HOMES,
    RETIRED_KEYS,
    ROUTING_KEYS,
    SECRET,
    TIER_KEYS,
    Converter,
    check_tier_name,
    closest,
    resolve_reference,
)
from .schema import Stack, Tier

DEFAULT_SECTION = "DEFAULT"
ROUTING_SECTION = "ROUTING"
_SECTION_KEYS = {DEFAULT_SECTION: DEFAULT_KEYS, ROUTING_SECTION: ROUTING_KEYS}
NO_VARIABLES: Mapping[str, str] = MappingProxyType({})


# --------------------------------------------------------------------------- errors


class IniError(NamedTuple):
    """One problem, located as ``file:line: [section] key: message``."""

    file: str
    line: int
    section: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:" if self.line else f"{self.file}:"
        if self.section:
            where += f" [{self.section}]"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where} {self.message}"


class ModelsIniError(UserError, ValueError):
    """Every problem found in one models.ini (or a file beside it); ``str()`` prints one per
    line. The CLI shows a single problem as its line, several under ``<file> has errors:``."""

    def __init__(self, errors: Iterable[IniError]) -> None:
        self.errors: list[IniError] = sorted(errors, key=lambda e: e.line)
        super().__init__("\n".join(map(str, self.errors)), 2)

    def report(self) -> str:
        if len(self.errors) == 1:
            return str(self)
        return f"{self.errors[0].file} has errors:\n{self}"


# --------------------------------------------------------------------------- scanner


class _Entry(NamedTuple):
    line: int
    parts: list[str]
    """The value's lines (continuation lines and blank lines inside it)."""

    @property
    def value(self) -> str:
        return "\n".join(self.parts).rstrip()


@dataclass
class _Section:
    name: str
    line: int
    entries: dict[str, _Entry] = field(default_factory=dict)


_HEADER = re.compile(r"\[(?P<name>.+)\]")
_OPTION = re.compile(r"(?P<key>.*?)\s*[=:]\s*(?P<value>.*)")
_INLINE_COMMENT = re.compile(r"(?:^|\s);")


class _Checker:
    """Collects located errors for one file."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[IniError] = []

    def at(self, line: int, section: str, key: str, message: str) -> None:
        self.errors.append(IniError(self.source, line, section, key, message))

    def error(self, section: _Section, key: str, message: str) -> None:
        """Report at the key's line, or the section header's when the key is not written."""
        line = section.entries[key].line if key in section.entries else section.line
        self.at(line, section.name, key, message)

    def values(self, section: _Section, known: Mapping[str, Converter]) -> dict[str, Any]:
        """Convert every key written in the section; report unknown, secret and bad ones."""
        values: dict[str, Any] = {}
        for key, entry in section.entries.items():
            if key in known:
                try:
                    value = known[key](entry.value)
                except ValueError as exc:
                    self.error(section, key, str(exc))
                else:
                    if value is not None:  # an empty text value means "unset"
                        values[key] = value
            elif SECRET.search(key) and not any(  # a typo of a key like max_output_tokens
                    SECRET.search(k) for k in difflib.get_close_matches(key, list(known), n=1)):
                self.error(
                    section,
                    key,
                    "looks like a secret, and models.ini is meant to be committed; "
                    "export it instead (e.g. ANTHROPIC_API_KEY, OPENAI_API_KEY) or use a named "
                    "AWS profile (AWS_PROFILE), which litellm reads from the environment",
                )
            else:
                self.error(section, key, _unknown_key_message(key, known))
        return values


def _scan(text: str, check: _Checker) -> list[_Section]:
    """Split text into sections and entries with configparser's line rules."""
    sections: dict[str, _Section] = {}
    current: _Section | None = None
    entry: _Entry | None = None  # the entry an indented line continues
    entry_indent = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        if raw.strip().startswith((";", "#")):
            continue
        comment = _INLINE_COMMENT.search(raw)
        value = (raw[: comment.start()] if comment else raw).strip()
        if not value:
            if entry is not None:
                entry.parts.append("")
            continue
        indent = len(raw) - len(raw.lstrip())
        if entry is not None and indent > entry_indent:
            entry.parts.append(value)
            continue
        entry, entry_indent = None, indent
        header = _HEADER.match(value)
        option = _OPTION.fullmatch(value)
        if header:
            name = header.group("name")
            if name in sections:
                first = sections[name].line
                check.at(lineno, name, "", f"duplicate section (first at line {first})")
            current = sections.setdefault(name, _Section(name, lineno))
        elif current is None:
            check.at(lineno, "", "", f"{value!r} comes before any [section] header")
        elif not option or not option.group("key"):
            check.at(lineno, current.name, "", f"{value!r}: expected key = value")
        else:
            key = option.group("key").lower()
            if key in current.entries:
                first = current.entries[key].line
                check.at(lineno, current.name, key, f"duplicate key (first at line {first})")
            entry = _Entry(lineno, [option.group("value")])
            current.entries.setdefault(key, entry)
    return list(sections.values())


# --------------------------------------------------------------------------- parsing


def _unknown_key_message(key: str, known: Mapping[str, Converter]) -> str:
    if key in RETIRED_KEYS:
        return f"unknown key: {RETIRED_KEYS[key]}"
    home = next((where for where, keys in KEY_HOMES.items() if key in keys), None)
    if home:
        return f"this key belongs in {home}"
    return f"unknown key{closest(key, known)}"


_HUB_FILE_KEYS = ("hf_repo", "hf_file", "hf_repo_next", "hf_file_next")


def _local_file(section: _Section, values: dict[str, Any], check: _Checker) -> bool:
    """Resolve ``gguf_path`` against models.ini's directory (made absolute); False when the
    tier also names a hub file (reported)."""
    if "gguf_path" not in values:
        return True
    both = [k for k in _HUB_FILE_KEYS if k in values]
    if both:
        check.error(section, "gguf_path", f"a tier's file is gguf_path or hf_repo + hf_file, "
                                          f"not both (remove {', '.join(both)})")
        return False
    values["gguf_path"] = os.path.abspath(Path(check.source).parent / values["gguf_path"])
    return True


def _tier(section: _Section, values: dict[str, Any], check: _Checker,
          variables: Mapping[str, str]) -> Tier | None:
    """Build a tier, detecting its backend as the original did; ``model_next = $NAME`` is
    that variable's value (unset: no queued model)."""
    if "model_next" in values:
        values["model_next"] = resolve_reference(values["model_next"], variables)
    backend = values.pop("backend", None)
    if ("backend" in section.entries and backend is None) or (
            "backends" in section.entries and "backends" not in values):
        return None  # bad backend(s) value, already reported
    if not _local_file(section, values, check):
        return None
    gguf_ready = bool((values.get("hf_repo") and values.get("hf_file")) or values.get("gguf_path"))
    if values.get("backends") and backend in (None, "litellm"):
        backend = "litellm"  # another machine's tier of the same name, unless model says otherwise
        values.setdefault("model", f"openai/{section.name}")
    if backend is None:
        backend = "litellm" if values.get("model") else "gguf" if gguf_ready else None
    if backend is None:
        check.error(section, "", "not a tier: set hf_repo+hf_file or gguf_path (local), model "
                                 "(hosted) or backends (other machines)")
        return None
    if backend == "litellm" and not values.get("model"):
        check.error(section, "backend", "backend = litellm needs model = <provider>/<model-id>")
        return None
    if backend == "gguf" and values.get("backends"):
        check.error(section, "backends", "a tier with backends is served by those machines; "
                                         "remove hf_repo/hf_file/gguf_path or backend = gguf")
    if backend == "litellm" and values.get("llama_server_args"):
        check.error(section, "llama_server_args", "only local (gguf) tiers run llama-server")
        return None
    if backend == "litellm" and values.get("session_cache"):
        check.error(section, "session_cache", "only local (gguf) tiers save sessions")
        return None
    if backend == "gguf" and not gguf_ready:
        check.error(section, "backend", "backend = gguf needs hf_repo and hf_file, or gguf_path")
        return None
    try:
        check_tier_name(section.name)
    except ValueError as exc:
        check.error(section, "", str(exc))
    values["description"] = values.get("description") or section.name
    if backend == "gguf" and "gguf_path" not in values:
        values["hf_repo_next"] = values.get("hf_repo_next") or values["hf_repo"]
    return Tier(name=section.name, backend=backend, line=section.line, **values)


def _check_names(tiers: Iterable[Tier], sections: Mapping[str, _Section], check: _Checker) -> None:
    """No name or alias may point at two tiers."""
    owners: dict[str, str] = {t.name: t.name for t in tiers}
    for t in tiers:
        clashes = [
            f"{alias!r} (used by [{owners[alias]}])"
            for alias in t.effective_aliases
            if owners.setdefault(alias, t.name) != t.name
        ]
        if clashes and t.aliases:
            check.error(sections[t.name], "aliases", f"already taken: {', '.join(clashes)}")
        elif clashes:
            check.error(
                sections[t.name],
                "role",
                f"default aliases of role {t.role} already taken: "
                f"{', '.join(clashes)}; set aliases = ... for this tier",
            )


def _check_ladder(stack: Stack, sections: Mapping[str, _Section], check: _Checker) -> None:
    """high < mid, and each ceiling fits the context of the tier it routes to."""
    routing = sections.get(ROUTING_SECTION, _Section(ROUTING_SECTION, 0))
    high, mid = stack.high_fidelity_ceiling, stack.mid_fidelity_ceiling
    if high >= mid:  # only possible when at least one of them is written
        key = (
            "high_fidelity_ceiling"
            if "high_fidelity_ceiling" in routing.entries
            else "mid_fidelity_ceiling"
        )
        check.error(
            routing, key, f"high_fidelity_ceiling {high} must be below mid_fidelity_ceiling {mid}"
        )
    agent = stack.first_with_role("agent")
    for key, tier in (
        ("high_fidelity_ceiling", stack.first_with_role("ultra") or agent),
        ("mid_fidelity_ceiling", agent),
    ):
        ceiling = getattr(stack, key)
        if tier is None or not 0 < tier.ctx_size < ceiling:
            continue
        if key in routing.entries:
            check.error(
                routing,
                key,
                f"{ceiling} is larger than ctx_size {tier.ctx_size} of "
                f"[{tier.name}], the tier it routes to",
            )
        else:
            check.error(
                sections[tier.name],
                "ctx_size",
                f"{tier.ctx_size} is smaller than {key} "
                f"{ceiling} (the default), so auto would send requests here that do not fit",
            )


def parse_stack(text: str, source: str = "models.ini",
                variables: Mapping[str, str] = NO_VARIABLES) -> Stack:
    """Parse and validate models.ini text; raise ModelsIniError listing every problem.

    ``variables`` are what ``$NAME`` references resolve to (the CLI hands in the
    environment's, :attr:`llmstack.settings.Settings.variables`); none by default.
    """
    check = _Checker(source)
    sections = {s.name: s for s in _scan(text, check)}
    settings: dict[str, Any] = {}
    tiers: list[Tier] = []
    for section in sections.values():
        if section.name in _SECTION_KEYS:
            settings.update(check.values(section, _SECTION_KEYS[section.name]))
        else:
            tier = _tier(section, check.values(section, TIER_KEYS), check, variables)
            tiers += [tier] if tier else []
    budget = sections.get(DEFAULT_SECTION, _Section(DEFAULT_SECTION, 0)).entries.get("memory_budget_mb")
    stack = Stack(**settings, tiers=tuple(tiers), path=source,
                  memory_budget_line=budget.line if budget else 0)
    _check_names(stack.tiers, sections, check)
    for t in stack.tiers:
        if t.fallback is not None and (stack.tier(t.fallback) in (None, t)):
            check.error(sections[t.name], "fallback", f"{t.fallback!r} is not another tier")
    _check_ladder(stack, sections, check)
    if check.errors:
        raise ModelsIniError(check.errors)
    return stack


def load_stack(path: str | os.PathLike[str], variables: Mapping[str, str] = NO_VARIABLES) -> Stack:
    """Read and parse a models.ini file; FileNotFoundError if it is missing."""
    return parse_stack(read_models_ini(path), str(path), variables)


def read_stack(path: Path, variables: Mapping[str, str] = NO_VARIABLES,
               hint: str = "create one: llmstack init") -> Stack:
    """The one way a command reads a models.ini: its stack, or a UserError (exit 2) saying
    it is missing (``models.ini not found: <path> (<hint>)``) or listing its errors (a
    :class:`ModelsIniError`)."""
    try:
        return load_stack(path, variables)
    except FileNotFoundError:
        raise UserError(f"models.ini not found: {path}" + (f" ({hint})" if hint else ""), 2) from None


def read_models_ini(path: str | os.PathLike[str]) -> str:
    """The text of a models.ini file; FileNotFoundError if it is missing.

    A file that is not a regular UTF-8 text file of at most
    :data:`~swapper.small_files.CONFIG_LIMIT` bytes (a FIFO, a device, a directory,
    binary data, another encoding, no permission, too large) is a one-line
    :class:`ModelsIniError`.
    """
    source = str(path)

    def unreadable(line: int, message: str) -> ModelsIniError:
        return ModelsIniError([IniError(source, line, "", "", message)])

    try:
        raw = read_small(Path(path), CONFIG_LIMIT)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise unreadable(0, str(exc).removeprefix(f"{source}: ")) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise unreadable(raw.count(b"\n", 0, exc.start) + 1, f"not UTF-8 text (byte "
                         f"0x{raw[exc.start]:02x}); models.ini must be UTF-8") from None
    if "\0" in text:
        raise unreadable(text.count("\n", 0, text.index("\0")) + 1,
                         "binary data (a NUL byte); models.ini must be a text file")
    return text


def bundled_template_text() -> str:
    """The models.ini template shipped inside the package."""
    return resources.files("llmstack").joinpath("data/models.ini").read_text(encoding="utf-8")
