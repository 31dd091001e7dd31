"""The user's ``litellm_config.yaml``: read, never written; merged with models.ini in memory.

The file is the user's (comments, unknown keys, their own entries all stay): llmstack
only reads its ``model_list`` entries whose ``model_name`` is a tier name and takes
their ``litellm_params`` (credentials such as ``api_key: os.environ/OPENAI_API_KEY``,
headers, api_version, ...). models.ini wins for ``model`` and ``api_base``, and its
timeouts for litellm's ``timeout`` and ``stream_timeout`` (``remote_limits``); every
other parameter comes from the file.
``os.environ/NAME`` values are read from the environment as litellm's proxy does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swapper.small_files import CONFIG_LIMIT, read_small

from .ini import IniError, ModelsIniError, Stack, Tier

LITELLM_CONFIG_ENV = "LLMSTACK_LITELLM_CONFIG"
_ENV_PREFIX = "os.environ/"

UserParams = Mapping[str, Mapping[str, Any]]
"""model_name -> that entry's litellm_params."""


def litellm_config_path(state_dir: Path | None) -> Path | None:
    """``$LLMSTACK_LITELLM_CONFIG``, else ``<project>/.llmstack/litellm_config.yaml``."""
    env = os.environ.get(LITELLM_CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    return state_dir / "litellm_config.yaml" if state_dir is not None else None


def read_user_params(path: Path | None) -> dict[str, dict[str, Any]]:
    """Each ``model_list`` entry's litellm_params by model_name; {} when there is no file.

    A file that is not valid YAML, or whose model_list is malformed, is a located
    :class:`ModelsIniError` (``file:line``), never silently an empty document.
    """
    if path is None or not path.exists():
        return {}
    import yaml

    source = str(path)
    try:
        document = yaml.safe_load(read_small(path, CONFIG_LIMIT).decode("utf-8"))
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        problem = f"not valid YAML: {exc.problem}"
        raise ModelsIniError([IniError(source, line, "", "", problem)]) from None
    except OSError as exc:  # not a regular file, too large, unreadable
        why = str(exc).removeprefix(f"{source}: ")
        raise ModelsIniError([IniError(source, 0, "", "", why)]) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelsIniError([IniError(source, 0, "", "", f"cannot read: {exc}")]) from None
    entries = (document or {}).get("model_list") or [] if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ModelsIniError([IniError(source, 0, "", "model_list", "expected a list of entries")])
    params: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("model_name"), str):
            raw = entry.get("litellm_params")
            params[entry["model_name"]] = dict(raw) if isinstance(raw, dict) else {}
    return params


def _resolve(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        return os.environ.get(value.removeprefix(_ENV_PREFIX))
    return value


def tier_params(tier: Tier, user: UserParams) -> dict[str, Any]:
    """litellm kwargs for one tier: the user's entry (by name) under models.ini's model/api_base."""
    entry = user.get(tier.name) or {}
    params = {k: _resolve(v) for k, v in entry.items() if k not in ("model", "api_base")}
    params = {k: v for k, v in params.items() if v is not None}
    params["model"] = tier.model
    if tier.api_base:
        params["api_base"] = tier.api_base
    elif entry.get("api_base"):
        params["api_base"] = _resolve(entry["api_base"])
    return params


def stack_params(stack: Stack, user: UserParams) -> dict[str, dict[str, Any]]:
    """tier_params for every litellm-served tier of the stack."""
    return {t.name: tier_params(t, user) for t in stack.tiers if t.backend == "litellm"}
