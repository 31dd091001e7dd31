"""``llmstack check``: is every tier ready to serve? Offline: reads only the local caches.

Per GGUF tier (the file its channel serves): ``present``; ``missing``; or ``drifted`` when
the cache holds it only under another revision than the ref, when its size differs from
what the hub announced at download time, or (``--verify``) when its sha256 differs from
the blob's etag. A tier with ``gguf_path`` is ``present`` when that is a regular file that
starts like a GGUF, ``missing`` when there is none, ``invalid`` otherwise. Hosted tiers are
listed with their model id and whether the provider's credential variable is set (the value
is never shown). Nothing is fetched, so it works with ``HF_HUB_OFFLINE=1`` and without
huggingface_hub being imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..config.schema import Stack, Tier
from ..settings import Settings
from .hf_cache import (
    Channel,
    HubCache,
    HubSizes,
    TierFile,
    human_size,
    regular_file,
    sha256_of,
    tier_file,
)

PROBLEMS = frozenset({"missing", "drifted", "invalid", "no credentials"})
GGUF_MAGIC = b"GGUF"

# litellm provider prefix -> the variables holding its credentials (any one suffices)
PROVIDER_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "anthropic": ("ANTHROPIC_API_KEY",),
    "openai": ("OPENAI_API_KEY",),
    "azure": ("AZURE_API_KEY",),
    "gemini": ("GEMINI_API_KEY",),
    "vertex_ai": ("GOOGLE_APPLICATION_CREDENTIALS",),
    "bedrock": ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_ROLE_ARN"),
    "mistral": ("MISTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "cohere": ("COHERE_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY",),
    "fireworks_ai": ("FIREWORKS_AI_API_KEY",),
    "nvidia_nim": ("NVIDIA_NIM_API_KEY",),
}


@dataclass(frozen=True)
class Row:
    tier: str
    channel: str
    status: str
    """present, missing, drifted, hosted, or no credentials."""
    what: str
    """repo/file, or the hosted model id."""
    detail: str = ""


def _gguf_row(file: TierFile, verify: bool, settings: Settings) -> Row:
    what = f"{file.repo}/{file.filename}"
    hub = HubCache(settings.hub_cache)
    cached = hub.find_cached(file)
    if cached is None:
        others = hub.other_cached_files(file.repo)
        seen = f"; the cache has {', '.join(others)}" if others else ""
        return Row(file.tier, file.channel, "missing", what,
                   f"run: llmstack download {file.tier}{_channel_flag(file.channel)}{seen}")
    if cached.other_revision:
        return Row(file.tier, file.channel, "drifted", what,
                   f"cached at revision {cached.commit[:8]} but {file.revision} is "
                   f"{(cached.ref_commit or '')[:8]}; run: llmstack download {file.tier}")
    announced = HubSizes.under(settings.cache_dir).recorded(cached.etag)
    if announced is not None and announced != cached.size:
        return Row(file.tier, file.channel, "drifted", what,
                   f"{cached.size} bytes on disk, the hub announced {announced}; "
                   f"run: llmstack download {file.tier}")
    if verify and cached.sha256 and sha256_of(cached.path) != cached.sha256:
        return Row(file.tier, file.channel, "drifted", what,
                   f"sha256 differs from the hub's ({cached.sha256[:12]}…); "
                   f"run: llmstack download {file.tier}")
    checked = "sha256 ok" if verify and cached.sha256 else (
        "size ok" if announced is not None else "size not recorded")
    return Row(file.tier, file.channel, "present", what, f"{human_size(cached.size)}, {checked}")


def _local_row(tier: Tier, channel: Channel) -> Row:
    """A ``gguf_path`` tier: the file is there, a regular file, and starts like a GGUF."""
    path = Path(str(tier.gguf_path))
    if not path.exists():
        return Row(tier.name, channel, "missing", str(path), "no such file (gguf_path)")
    if regular_file(path) is None:
        return Row(tier.name, channel, "invalid", str(path), "not a regular file (gguf_path)")
    try:
        with path.open("rb") as data:
            magic = data.read(len(GGUF_MAGIC))
    except OSError as exc:
        return Row(tier.name, channel, "invalid", str(path), exc.strerror or str(exc))
    if magic != GGUF_MAGIC:
        return Row(tier.name, channel, "invalid", str(path), "not a GGUF file")
    return Row(tier.name, channel, "present", str(path),
               f"{human_size(path.stat().st_size)}, local file")


def _channel_flag(channel: str) -> str:
    return " --channel next" if channel == "next" else ""


def credential_vars(model: str) -> tuple[str, ...] | None:
    """The variables one of which the model's provider needs; None for an unknown provider."""
    provider = model.split("/", 1)[0] if "/" in model else ""
    return PROVIDER_CREDENTIALS.get(provider)


def _aws_profile_file(home: Path) -> bool:
    return any((home / ".aws" / name).is_file() for name in ("credentials", "config"))


def _hosted_row(tier: Tier, channel: Channel, settings: Settings) -> Row:
    model = (tier.model_next if channel == "next" and tier.model_next else tier.model) or ""
    names = credential_vars(model)
    if names is None:
        return Row(tier.name, channel, "hosted", model, "credentials: unknown provider, not checked")
    found = [n for n in names if settings.variables.get(n)]
    if found or (model.startswith("bedrock/") and _aws_profile_file(settings.home)):
        return Row(tier.name, channel, "hosted", model, f"credentials: {(found or ['~/.aws'])[0]} set")
    return Row(tier.name, channel, "no credentials", model, f"export {' or '.join(names)}")


def check_stack(stack: Stack, settings: Settings, channel: Channel = "current",
                verify: bool = False) -> list[Row]:
    """One row per tier, in file order: the caches and credential variables ``settings``
    names."""
    rows = []
    for tier in stack.tiers:
        file = tier_file(tier, channel)
        rows.append(_gguf_row(file, verify, settings) if file
                    else _local_row(tier, channel) if tier.backend == "gguf" and tier.gguf_path
                    else _hosted_row(tier, channel, settings))
    return rows


def report(rows: list[Row], out: TextIO, memory: tuple[bool, str] | None = None) -> int:
    """Print the table, ``memory`` (fits, and the line saying so) and a verdict; 1 when any
    row is a problem or the tiers do not fit the memory budget."""
    width = max([len(r.tier) for r in rows] + [4])
    print(f"{'tier':{width}}  {'channel':7}  {'status':14}  file / model", file=out)
    for r in rows:
        print(f"{r.tier:{width}}  {r.channel:7}  {r.status:14}  {r.what}"
              + (f"  ({r.detail})" if r.detail else ""), file=out)
    problems = [r for r in rows if r.status in PROBLEMS]
    fits = memory is None or memory[0]
    if memory is not None:
        print(f"{'[OK]' if fits else '[!]'} {memory[1]}", file=out)
    if problems:
        print(f"[!] {len(problems)} of {len(rows)} tiers not ready", file=out)
        return 1
    if not fits:
        print("[!] the tiers do not fit the memory budget", file=out)
        return 1
    print(f"[OK] all {len(rows)} tiers ready", file=out)
    return 0
