"""``llmstack status``: what the project's stack runs, read from its own endpoints.

Kept light for speed (goal: whole process well under 100 ms): the stdlib
``http.client`` on one keep-alive connection for ``/running`` and ``/v1/models``
(importing httpx alone costs about 45 ms here, see benchmarks/RESULTS.md), and
psutil for the pid check and the children's resident memory.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psutil

from ..project.channels import live_channel
from ..project.paths import Project, find_project
from ..project.pidrecord import StaleRecord, live_record, record_path
from ..settings import Settings
from .registry import Command
from .stackview import decision_line, memory_line, session_lines, state_text

TIMEOUT = 2.0
STOPPED = 3  # exit status when nothing runs, as `systemctl status` / LSB


class StackClient:
    """GET JSON from a running stack over one connection (stdlib, for speed); ``headers``:
    what each request carries (the stack's API key, :attr:`Settings.auth_headers`)."""

    def __init__(self, base: str, headers: dict[str, str], timeout: float = TIMEOUT) -> None:
        parts = urlsplit(base)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self.prefix = parts.path.rstrip("/")
        self.headers = headers
        self.conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)

    def get_json(self, path: str) -> Any:
        self.conn.request("GET", self.prefix + path, headers=self.headers)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"GET {path}: HTTP {response.status} {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        self.conn.close()


def _rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.Error:
        return None


def collect(project: Project, settings: Settings) -> dict[str, Any]:
    """The status document (what ``--json`` prints)."""
    root = project.root
    channel = live_channel(project)
    doc: dict[str, Any] = {"project": str(root), "channel": channel.name, "state": "stopped",
                           "url": None, "pid": None, "tiers": [],
                           "opencode_config": str(project.opencode_json)}
    if channel.external:
        doc["url"] = channel.url
    else:
        try:
            found = live_record(root)
        except StaleRecord as stale:
            doc["stale_record"] = f"{record_path(root)}: {stale}"
            return doc
        if found is None:
            from ..project.daemon import project_url  # only when no record: status stays fast

            doc["url"] = project_url(project, settings)
            if doc["url"] is None:
                return doc
            doc["unrecorded"] = True
        else:
            record = found[0]
            doc.update(url=record.url, pid=record.pid, logs=record.log_dir or None,
                       uptime_s=round(time.time() - record.started_at),
                       rss_mb=_rss_mb(record.pid))
    client = StackClient(doc["url"], settings.auth_headers)
    try:
        served = client.get_json("/running")
        running = {row["model"]: row for row in served["running"]}
        models = client.get_json("/v1/models")["data"]
        live = client.get_json("/api/state")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if doc.pop("unrecorded", False):  # nothing (or no stack) at the project's address
            doc["url"] = None
            return doc
        doc["state"] = "not answering"
        doc["error"] = str(exc) or type(exc).__name__
        return doc
    finally:
        client.close()
    if doc.get("unrecorded"):
        _describe_unrecorded(doc, served.get("pid"))
    doc["state"] = "running"
    doc["base_url"] = doc["url"] + "/v1"
    facts = {m["model"]: m for m in live["models"]}
    doc.update(memory=live["memory"], decisions=live["decisions"][-5:], swaps=live["swaps"][-3:],
               sessions=live.get("sessions"))
    for row in models:
        if "tier" not in row or row["id"] != row["tier"]:
            continue  # auto and aliases
        up = running.get(row["id"], {})
        fact = facts.get(row["id"], {})
        meta = fact.get("meta") or {}
        hosted = row.get("backend") == "litellm"
        doc["tiers"].append({
            "name": row["id"], "role": row.get("role"), "backend": row.get("backend"),
            "state": up.get("state") or ("hosted" if hosted else "stopped"),
            "detail": state_text(fact, live["ts"]) if fact and not hosted else None,
            "pid": up.get("pid"), "port": up.get("port"),
            "rss_mb": _rss_mb(up.get("pid")), "memory_mb": up.get("memory_mb"),
            "in_flight": fact.get("in_flight", 0), "queued": fact.get("queued", 0),
            "context": row.get("context_length"), "hosted_model": row.get("hosted_model"),
            "backends": row.get("backends", []), "gguf_path": meta.get("gguf_path"),
            "missing_file": meta.get("missing_file")})
    return doc


def _describe_unrecorded(doc: dict[str, Any], pid: Any) -> None:
    """A stack that answers at the project's address with no pid record here (a foreground
    ``llmstack serve`` records none): the pid it reports, its uptime, memory and working
    directory if known (another project's stack may answer there too)."""
    if type(pid) is not int or pid <= 0:
        return
    try:
        proc = psutil.Process(pid)
        started, cwd = proc.create_time(), proc.cwd()
    except psutil.Error:
        return
    doc.update(pid=pid, uptime_s=round(time.time() - started), rss_mb=_rss_mb(pid),
               serve_cwd=cwd)


def _duration(seconds: int) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def render(doc: dict[str, Any], out: IO[str]) -> None:
    channel = doc["channel"] + (f" {doc['url']}" if doc["channel"] == "external" else "")
    head = f"llmstack: {doc['state']}"
    if doc["pid"]:
        rss = f", {doc['rss_mb']:.0f} MB" if doc.get("rss_mb") is not None else ""
        head += f" (pid {doc['pid']}, up {_duration(doc.get('uptime_s', 0))}{rss})"
    print(f"{head}, channel {channel}", file=out)
    print(f"  project  {doc['project']}", file=out)
    if doc.get("stale_record"):
        print(f"  [!] stale pid record {doc['stale_record']} (llmstack start replaces it)",
              file=out)
    if doc.get("error"):
        print(f"  [!] {doc['url']} does not answer: {doc['error']}", file=out)
    if doc["state"] != "running":
        if doc["channel"] != "external" and not doc.get("error"):
            print("  start it: llmstack start --detach", file=out)
        return
    opencode = (f"  (opencode: OPENCODE_CONFIG={doc['opencode_config']})"
                if Path(doc["opencode_config"]).exists() else "")
    print(f"  url      {doc['base_url']}{opencode}", file=out)
    if doc.get("unrecorded"):
        where = f" in {doc['serve_cwd']}" if doc.get("serve_cwd") else ""
        print(f"  [i] not started by `llmstack start` here (no pid record): a `llmstack serve`{where} "
              "answers at this project's address; Ctrl-C where it runs stops it", file=out)
    if doc.get("logs"):
        print(f"  logs     {doc['logs']}  (llmstack logs [tier] -f)", file=out)
    rows = [("TIER", "ROLE", "BACKEND", "STATE", "IN", "QUEUE", "PID", "PORT", "RSS", "CONTEXT")]
    for t in doc["tiers"]:
        rows.append((t["name"], t["role"] or "-", t["backend"] or "-", t["detail"] or t["state"],
                     str(t["in_flight"]), str(t["queued"]), str(t["pid"] or "-"),
                     str(t["port"] or "-"),
                     f"{t['rss_mb']:.0f} MB" if t["rss_mb"] is not None else "-",
                     str(t["context"] or "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    for t in doc["tiers"]:
        if t.get("hosted_model") and not t.get("backends"):
            print(f"  {t['name']}: hosted {t['hosted_model']}", file=out)
        if t.get("gguf_path"):
            print(f"  {t['name']}: gguf_path {t['gguf_path']}", file=out)
        if t.get("missing_file"):
            print(f"  [!] {t['name']}: {t['missing_file']}", file=out)
        for b in t.get("backends", []):
            health = "healthy" if b.get("healthy") else f"DOWN ({b.get('error') or 'no answer'})"
            print(f"  {t['name']}: backend {b['url']} {health}", file=out)
    resident = [t["name"] for t in doc["tiers"] if t["pid"]]
    print(f"  resident {', '.join(resident) or 'none'}; {memory_line(doc)}", file=out)
    for line in session_lines(doc.get("sessions")):
        print(f"  {line}", file=out)
    for d in reversed(doc["decisions"]):
        print(f"  recent   {decision_line(d)}", file=out)
    for s in reversed(doc["swaps"]):
        print(f"  swap     {s['model']} evicting {', '.join(s.get('evict') or []) or 'nothing'} "
              f"(set {s.get('set')}, cost {s.get('cost')}): {s.get('result') or 'in progress'}",
              file=out)


def status(project: Project, settings: Settings, as_json: bool, out: IO[str] = sys.stdout) -> int:
    """Print the status; 0 when running, 3 when stopped, 1 when it does not answer."""
    doc = collect(project, settings)
    if as_json:
        print(json.dumps(doc, indent=2), file=out)
    else:
        render(doc, out)
    return {"running": 0, "stopped": STOPPED}.get(doc["state"], 1)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _status(args: argparse.Namespace, settings: Settings) -> int:
    return status(find_project(settings), settings, args.json)


COMMANDS = {
    "status": Command(_status, "What the project's stack runs, from its own /running and "
                               "/v1/models. Exit status: 0 running, 3 stopped, 1 not answering.",
                      _arguments),
}
