"""One line of text per fact of a running stack's ``/api/state``: shared by status and top."""

from __future__ import annotations

import time
from typing import Any

BAR = 30


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 1000 else f"{value:.0f}ms"


def state_text(model: dict[str, Any], now: float) -> str:
    """``starting 3s``, ``failed: reason``, ``stopped (evicted for x)``, or the bare state."""
    state = model["state"]
    if state == "starting" and model.get("since"):
        return f"starting {max(now - model['since'], 0):.0f}s"
    if state == "failed":
        return f"failed: {model.get('failure') or ''}"
    if state == "stopped" and model.get("stop_reason"):
        return f"stopped ({model['stop_reason']})"
    return str(state)


def memory_line(doc: dict[str, Any]) -> str:
    """``memory [###...] 120 MB of 21695 MB (detected: ...)``: resident against the budget, and
    where the budget came from."""
    memory = doc["memory"]
    budget, resident = memory["budget_mb"], memory["resident_mb"]
    source = f" ({memory['budget_source']})" if memory.get("budget_source") else ""
    filled = round(BAR * min(resident / budget, 1.0)) if budget else 0
    return (f"memory [{'#' * filled}{'.' * (BAR - filled)}] {resident:.0f} MB"
            f" of {budget:.0f} MB{source}" if budget else f"memory {resident:.0f} MB (no budget)")


def _size(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def session_lines(sessions: dict[str, Any] | None) -> list[str]:
    """The session cache: what is saved against the cap, what each tier holds now, and one
    ``[!]`` line per tier it is off for, with why (none when no tier uses it)."""
    if not sessions:
        return []
    held = ", ".join(f"{m} {n}" for m, n in sessions.get("held", {}).items()) or "none"
    lines = [f"sessions {sessions['sessions']} saved, {_size(sessions['bytes'])} of "
             f"{_size(sessions['max_bytes'])} in {sessions['root']}; held now: {held}"]
    lines += [f"[!] session cache off for {m}: {why}" for m, why in sessions.get("off", {}).items()]
    return lines


def decision_line(d: dict[str, Any]) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(d["ts"]))
    tps = f"{d['tps']} tok/s" if d.get("tps") is not None else ""
    return (f"{clock} {d['model']:<10} {d['status']} first {ms(d.get('ttft_ms'))} total "
            f"{ms(d.get('ms'))} {tps} {d.get('reason') or d.get('path', '')}").rstrip()
