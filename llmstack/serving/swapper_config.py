"""models.ini tiers -> a swapper config: llama-server command lines and the residency policy.

Residency, from roles: the fast tier stays resident (preloaded, never unloaded
by TTL), and at most one heavy tier runs beside it; the plan and
plan-uncensored tiers may co-reside with fast. Eviction cost follows size. Every
tier's memory (weights plus KV cache for its context) is checked against the memory budget
(:func:`fit_budget`) so a models.ini whose allowed sets cannot fit is refused in one line.
Hosted tiers have no process: they cost nothing and co-reside with everything.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swapper.config import (
    Matrix,
    MemoryBudgetError,
    ModelSpec,
    SessionCacheConfig,
    SwapperConfig,
    Timeouts,
)
from swapper.solver import compile_plan

from ..config.ini import DEFAULT_SECTION, IniError, ModelsIniError
from ..config.schema import SERVING_ROLES, Stack, Tier
from ..models.gguf_info import GGUFInfo, kv_cache_bytes, read_gguf_info, tier_memory_mb
from ..models.hf_cache import HubCache, size_gb
from ..models.machine import MemoryBudget, stack_budget
from ..settings import Settings

log = logging.getLogger("llmstack")
HEALTH_CHECK_TIMEOUT = 600.0
# llama-swap's default of 10 queued + in-flight requests per model is low for an agent
# with parallel subagents; llama-server queues what its slots cannot take yet.
TIER_CONCURRENCY_LIMIT = 64
_ROLE_VARS = {"fast": "f", "agent": "c", "plan": "p", "plan-uncensored": "u"}
_SAMPLER_FLAGS = (("temp", "--temp"), ("top_p", "--top-p"), ("top_k", "--top-k"),
                  ("min_p", "--min-p"), ("rep_pen", "--repeat-penalty"))
SLOT_TOKEN_BYTES = 16
"""Bytes a saved slot file spends per token besides its K and V (the token and its cell)."""
GB = 10**9


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and value >= 1 else repr(float(value))


def llama_server_argv(stack: Stack, tier: Tier, server: str, model_file: Path) -> tuple[str, ...]:
    """The llama-server command line of one GGUF tier (samplers in the original's order), then
    ``--embeddings`` / ``--reranking`` for those roles and the tier's ``llama_server_args``.

    A tier that saves its sessions runs with ``--cache-ram 0``: with the host-RAM prompt cache
    on, llama-server moves an idle slot's context there as soon as another slot runs (4 slots
    sharing one KV pool by default), where no save reaches it; without it each session keeps
    its slot, and that cache (8 GiB by default, outside the memory budget) is not allocated."""
    argv = [server, "--host", "127.0.0.1", "--port", "${PORT}",
            "-ngl", str(stack.n_gpu_layers), "-fa", stack.flash_attn]
    if stack.jinja:
        argv.append("--jinja")
    argv += ["--cache-type-k", stack.cache_type_k, "--cache-type-v", stack.cache_type_v,
             "--threads", str(stack.threads), "--no-warmup", "-lm", "none",
             "-m", str(model_file), "--alias", tier.name, "-c", str(tier.ctx_size)]
    if stack.session_cache_for(tier):  # an idle slot keeps its context where a save finds it
        argv += ["--cache-ram", "0"]
    if tier.max_output_tokens:  # caps every request's generation, max_tokens or not
        argv += ["-n", str(tier.max_output_tokens)]
    if tier.rope_scaling is not None:
        scale, orig_ctx = tier.rope_scaling
        argv += ["--rope-scaling", "yarn", "--rope-scale", _number(scale), "--yarn-orig-ctx", str(orig_ctx)]
    sampler = dict(tier.sampler)
    for name, flag in _SAMPLER_FLAGS:
        if name in sampler:
            value = sampler[name]
            argv += [flag, str(int(value)) if name == "top_k" else repr(float(value))]
    if tier.role in SERVING_ROLES:
        argv.append(SERVING_ROLES[tier.role])
    return (*argv, *tier.llama_server_args)


def gguf_info(model_file: Path | None) -> GGUFInfo | None:
    """The GGUF's metadata, read once per tier; None without a file, or when it cannot be
    read (a partial or foreign file: logged, and its sizes fall back to ``size_gb``)."""
    if model_file is None or not model_file.exists():
        return None
    try:
        return read_gguf_info(model_file)
    except (OSError, ValueError, IndexError, KeyError) as exc:
        log.warning("cannot read GGUF metadata of %s (%s); using size_gb", model_file, exc)
        return None


def tier_memory(stack: Stack, tier: Tier, info: GGUFInfo | None) -> float:
    """Weights plus KV cache in MB: from the GGUF's ``info`` when read, else ``size_gb``."""
    if info is None:
        return (tier.size_gb or 0.0) * 1024
    ctx = tier.ctx_size or info.context_length
    kv = kv_cache_bytes(info, ctx, stack.cache_type_k, stack.cache_type_v)
    return float(tier_memory_mb(info.file_size_bytes, kv))


def slot_bytes_per_token(stack: Stack, info: GGUFInfo | None) -> int:
    """Bytes a saved session of this model takes per token (its K and V in the stack's cache
    types, and the token's own); 0, unknown until its first save, without the GGUF's ``info``."""
    if info is None:
        return 0
    return kv_cache_bytes(info, 1, stack.cache_type_k, stack.cache_type_v) + SLOT_TOKEN_BYTES


def tier_timeouts(stack: Stack, tier: Tier) -> Timeouts:
    """The tier's upstream timeouts: its own keys, else [DEFAULT]'s."""
    response = stack.response_timeout if tier.response_timeout is None else tier.response_timeout
    idle = stack.idle_timeout if tier.idle_timeout is None else tier.idle_timeout
    return Timeouts(response=float(response), idle=float(idle))


def _evict_cost(tier: Tier) -> int:
    size = size_gb(tier)
    return min(30, max(1, round((size if size is not None else 5.0) / 1.5)))


def residency_matrix(local: list[Tier]) -> Matrix | None:
    """Fast stays; one heavy tier beside it; plan and plan-uncensored may share with fast.
    Embedding and rerank tiers (small, and called between chats) run beside every set."""
    if not local:
        return None
    names: dict[str, str] = {}
    for index, tier in enumerate(local):
        var = _ROLE_VARS.get(tier.role, "")
        names[tier.name] = var if var and var not in names.values() else f"t{index}"
    fast = next((t for t in local if names[t.name] == "f"), None)
    serving = [names[t.name] for t in local if t.role in SERVING_ROLES]
    sets: dict[str, str] = {}
    for tier in local:
        if tier is fast or tier.role in SERVING_ROLES:
            continue
        var = names[tier.name]
        label = (tier.role if var in _ROLE_VARS.values() else tier.name).replace("-", "_")
        sets[f"{label}_with_fast" if fast else label] = f"f & {var}" if fast else var
    plans = [names[t.name] for t in local if names[t.name] in ("p", "u")]
    if len(plans) == 2:
        sets["all_chats_with_fast" if fast else "all_chats"] = " & ".join((["f"] if fast else []) + plans)
    if not sets and fast is not None:
        sets["fast_alone"] = "f"
    if serving:
        sets = {name: " & ".join([members, *serving]) for name, members in sets.items()}
        sets = sets or {"serving": " & ".join(serving)}
    return Matrix(vars={v: n for n, v in names.items()},
                  evict_costs={names[t.name]: _evict_cost(t) for t in local}, sets=sets)


def _missing(tier: Tier) -> str:
    """Why a GGUF tier has no file, and the fix (``missing_file``, in its 503)."""
    if tier.gguf_path:
        return f"{tier.gguf_path} (gguf_path) is not a file on this machine"
    return f"{tier.hf_repo}/{tier.hf_file} is not downloaded; run: llmstack download {tier.name}"


def build_swapper_config(stack: Stack, server: str, files: Mapping[str, Path | None],
                         hub: HubCache, log_dir: str = "",
                         budget: MemoryBudget | None = None) -> SwapperConfig:
    """The swapper config for a stack; ``files`` maps each GGUF tier to its local file (a tier
    without one is given where ``hub`` would hold it, or its ``gguf_path``, and marked
    ``missing_file``). ``budget``: the memory budget (:func:`~llmstack.models.machine.stack_budget`);
    None: models.ini's ``memory_budget_mb`` as written (0: none). Where saved sessions live, and
    whose they are, is the caller's to add (``session_cache``)."""
    models: dict[str, ModelSpec] = {}
    local = [t for t in stack.tiers if t.backend == "gguf"]
    for tier in stack.tiers:
        common: dict[str, Any] = dict(
            id=tier.name, aliases=tier.effective_aliases, name=tier.description or tier.name,
            description=tier.description, send_loading_state=tier.send_loading_state,
            metadata={"role": tier.role, "tier": tier.tier or tier.role, "backend": tier.backend,
                      "ctx_size": tier.ctx_size})
        if tier.backend != "gguf":
            models[tier.name] = ModelSpec(cmd=(), proxy="", **common)
            continue
        model_file = files.get(tier.name)
        if tier.gguf_path:
            common["metadata"] = {**common["metadata"], "gguf_path": tier.gguf_path}
        if model_file is None:
            common["metadata"] = {**common["metadata"], "missing_file": _missing(tier)}
        info = gguf_info(model_file)
        argv = llama_server_argv(stack, tier, server, model_file or (
            Path(tier.gguf_path) if tier.gguf_path
            else hub.missing_path(str(tier.hf_repo), str(tier.hf_file))))
        models[tier.name] = ModelSpec(cmd=argv, ttl=float(tier.effective_ttl),
                                      concurrency_limit=TIER_CONCURRENCY_LIMIT,
                                      timeouts=tier_timeouts(stack, tier),
                                      memory_mb=tier_memory(stack, tier, info),
                                      session_cache=stack.session_cache_for(tier),
                                      kv_bytes_per_token=slot_bytes_per_token(stack, info),
                                      **common)
    return SwapperConfig(
        models=models, health_check_timeout=HEALTH_CHECK_TIMEOUT,
        preload=tuple(t.name for t in local if t.role == "fast")[:1],
        matrix=residency_matrix(local),
        memory_budget_mb=float(budget.mb if budget else stack.memory_budget_mb),
        memory_budget_source=budget.source if budget else "",
        max_queue_wait=float(stack.max_queue_wait),
        log_dir=log_dir,
        session_cache=SessionCacheConfig(max_bytes=int(stack.session_cache_max_gb * GB),
                                         min_tokens=stack.session_cache_min_tokens))


def budgeted_config(stack: Stack, settings: Settings, server: str,
                    files: Mapping[str, Path | None], hub: HubCache,
                    log_dir: str = "") -> SwapperConfig:
    """:func:`build_swapper_config` with the stack's memory budget (models.ini's, else this
    machine's), checked by :func:`fit_budget`: what ``serve`` runs and ``check`` checks."""
    config = build_swapper_config(stack, server, files, hub, log_dir,
                                  stack_budget(stack, settings, server))
    fit_budget(stack, config)
    return config


def fit_budget(stack: Stack, config: SwapperConfig) -> None:
    """Every GGUF tier, and every set of them the residency policy lets run together, fits
    ``config``'s budget; else a one-line :class:`ModelsIniError` at models.ini's
    ``memory_budget_mb`` with the numbers."""
    try:
        compile_plan(config)
    except MemoryBudgetError as exc:
        raise ModelsIniError([IniError(stack.path, stack.memory_budget_line, DEFAULT_SECTION,
                                       "memory_budget_mb", budget_message(exc, config))]) from None


def budget_message(exc: MemoryBudgetError, config: SwapperConfig) -> str:
    """``a + b need N MB together, M MB over the budget of B MB (<source>); <the fix>``."""
    need = (f"{exc.models[0]} needs" if len(exc.models) == 1
            else f"{' + '.join(exc.models)} need")
    source = config.memory_budget_source
    detected = source.startswith("detected")
    fix = ("set memory_budget_mb if this machine can hold more, or lower ctx_size or use "
           "smaller files (quant)" if detected
           else "raise memory_budget_mb, or lower ctx_size or use smaller files (quant)")
    return (f"{need} {exc.total_mb:.0f} MB{' together' if len(exc.models) > 1 else ''}, "
            f"{exc.total_mb - exc.budget_mb:.0f} MB over the budget of {exc.budget_mb:.0f} MB"
            f"{f' ({source})' if source else ''}; {fix}")

