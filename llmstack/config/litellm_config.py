"""The user's ``litellm_config.yaml``: read, never written; merged with models.ini in memory.

The file is the user's (comments, unknown keys, their own entries all stay): llmstack
only reads its ``model_list`` entries whose ``model_name`` is a tier name and takes
their ``litellm_params`` (credentials such as ``api_key: os.environ/OPENAI_API_KEY``,
headers, api_version, ...). models.ini wins for ``model`` and ``api_base``, and its
timeouts for litellm's ``timeout`` and ``stream_timeout`` (``remote_limits``); every
other parameter comes from the file.
``os.environ/NAME`` values are the named variable's, as litellm's proxy reads them: the
caller hands in the variables (:attr:`llmstack.settings.Settings.variables`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swapper.small_files import CONFIG_LIMIT, read_small

from ..settings import Settings
from .ini import NO_VARIABLES, IniError, ModelsIniError
from .schema import Stack, Tier

_ENV_PREFIX = "os.environ/"

UserParams = Mapping[str, Mapping[str, Any]]
"""model_name -> that entry's litellm_params."""


def litellm_config_path(settings: Settings, state_dir: Path | None) -> Path | None:
    """``$LLMSTACK_LITELLM_CONFIG``, else ``<project>/.llmstack/litellm_config.yaml``."""
    if settings.litellm_config is not None:
        return settings.litellm_config
    return state_dir / "litellm_config.yaml" if state_dir is not None else None


def read_user_params(path: Path | None,
                     variables: Mapping[str, str] = NO_VARIABLES) -> dict[str, dict[str, Any]]:
    """Each ``model_list`` entry's litellm_params by model_name, ``os.environ/NAME`` values
    replaced by ``variables[NAME]`` (None when unset); {} when there is no file.

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
            params[entry["model_name"]] = ({k: _resolve(v, variables) for k, v in raw.items()}
                                           if isinstance(raw, dict) else {})
    return params


def _resolve(value: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        return variables.get(value.removeprefix(_ENV_PREFIX))
    return value


def tier_params(tier: Tier, user: UserParams) -> dict[str, Any]:
    """litellm kwargs for one tier: the user's entry (by name) under models.ini's model/api_base."""
    entry = user.get(tier.name) or {}
    params = {k: v for k, v in entry.items() if k not in ("model", "api_base") and v is not None}
    params["model"] = tier.model
    if tier.api_base:
        params["api_base"] = tier.api_base
    elif entry.get("api_base"):
        params["api_base"] = entry["api_base"]
    return params


def stack_params(stack: Stack, user: UserParams) -> dict[str, dict[str, Any]]:
    """tier_params for every litellm-served tier of the stack."""
    return {t.name: tier_params(t, user) for t in stack.tiers if t.backend == "litellm"}
