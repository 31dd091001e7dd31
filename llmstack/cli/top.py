"""``llmstack top``: a live terminal view of a running stack (models, memory, queue, decisions).

It polls the stack's ``GET /api/state`` (the facts /ui shows, from the same
event bus) every ``interval`` seconds and redraws the screen; ``q`` or Ctrl-C
quits. Stdlib only (http.client via :class:`~llmstack.cli.status.StackClient`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from ..errors import UserError
from ..project.channels import live_channel
from ..project.paths import Project, find_project
from ..settings import Settings
from .registry import Command
from .stackview import decision_line, memory_line, ms, state_text
from .status import StackClient

CLEAR = "\x1b[H\x1b[2J"
ALT_SCREEN, MAIN_SCREEN = "\x1b[?1049h", "\x1b[?1049l"  # like top: the terminal is restored


def stack_url(project: Project) -> str:
    """The URL of the project's running stack (its pid record, or the external channel)."""
    from ..project.pidrecord import StaleRecord, live_record

    channel = live_channel(project)
    if channel.external and channel.url:
        return channel.url
    try:
        found = live_record(project.root)
    except StaleRecord:
        found = None
    if found is None:
        raise UserError("no stack runs for this project (llmstack start --detach), "
                        "or name one with --url")
    return found[0].url


def screen(doc: dict[str, Any], url: str, width: int, height: int) -> list[str]:
    """The lines of one frame, cut to the terminal's size."""
    now = doc["ts"]
    lines = [f"llmstack top  {url}  {time.strftime('%H:%M:%S', time.localtime(now))}  (q quits)",
             "", (f"{'MODEL':<14} {'STATE':<28} {'IN':>3} {'QUEUE':>5} {'MEMORY':>9} {'PID':>7}"
                  f" {'LOAD':>7}")]
    for m in doc["models"]:
        lines.append(f"{m['model']:<14} {state_text(m, now)[:28]:<28} {m['in_flight']:>3} "
                     f"{m['queued']:>5} {m['memory_mb']:>6.0f} MB {m['pid'] or '-':>7} "
                     f"{ms(m.get('last_load_ms')):>7}")
    lines += ["", memory_line(doc), "", "last decisions:"]
    lines += [decision_line(d) for d in reversed(doc["decisions"][-10:])] or ["  none yet"]
    lines += ["", "swaps:"]
    for s in reversed(doc["swaps"][-5:]):
        evicted = ", ".join(s.get("evict") or []) or "nothing"
        lines.append(f"  {s['model']} evicting {evicted} (set {s.get('set')}, cost "
                     f"{s.get('cost')}): {s.get('result') or 'in progress'}")
    return [line[:width] for line in lines[:height]]


@contextlib.contextmanager
def _keys(stream: IO[str]) -> Iterator[bool]:
    """cbreak mode on a terminal (keys arrive unbuffered); yields whether keys can be read."""
    if not stream.isatty():
        yield False
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def top(url: str, headers: dict[str, str], interval: float = 0.5, out: IO[str] = sys.stdout,
        frames: int | None = None) -> int:
    """Redraw every ``interval`` s until ``q``/Ctrl-C (or after ``frames`` frames); ``headers``:
    what each request carries (the stack's API key)."""
    client = StackClient(url, headers)
    shown = 0
    tty = out.isatty()
    if tty:
        out.write(ALT_SCREEN)
    with _keys(sys.stdin) as keys:
        try:
            while frames is None or shown < frames:
                size = shutil.get_terminal_size()
                try:
                    body = "\n".join(screen(client.get_json("/api/state"), url, size.columns,
                                            size.lines - 1))
                except (OSError, ValueError) as exc:
                    client.close()
                    client = StackClient(url, headers)
                    body = f"llmstack top  {url}: not answering ({exc})"
                out.write(CLEAR + body + "\n")
                out.flush()
                shown += 1
                if keys and select.select([sys.stdin], [], [], interval)[0]:
                    if os.read(sys.stdin.fileno(), 1) in (b"q", b"Q"):
                        return 0
                elif not keys and (frames is None or shown < frames):
                    time.sleep(interval)
        except KeyboardInterrupt:
            return 0
        finally:
            client.close()
            if tty:
                out.write(MAIN_SCREEN)
                out.flush()
    return 0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the stack's URL (default: this project's running stack)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between frames (0.5)")


def _top(args: argparse.Namespace, settings: Settings) -> int:
    return top(args.url or stack_url(find_project(settings)), settings.auth_headers, args.interval)


COMMANDS = {
    "top": Command(_top, "Redraw the running stack's state (GET /api/state, the facts /ui shows) "
                         "every --interval seconds until q or Ctrl-C.", _arguments),
}
