"""The /ui page in a real headless Chromium (Debian's chromium + chromedriver, via selenium)
on a running demo stack with the real llama-server."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    Server,
    free_port,
    http,
    start_llmstack,
    start_server,
    stop_server,
    wait_until,
)

LOAD_DELAY_S = 1.5  # the wrapper sleeps before exec'ing llama-server: a load slow enough to see


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"{tool} is needed (apt-get install chromium chromium-driver)")
    return str(found)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _need("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP reports land there
    driver = webdriver.Chrome(options=options, service=Service(_need("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


def slow_llama_server(tmp_path: Path, real: str) -> Path:
    script = tmp_path / "slow-llama-server"
    script.write_text(f"#!/bin/sh\nsleep {LOAD_DELAY_S}\nexec {real} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.mark.real
def test_the_page_loads_a_tier_and_shows_a_routing_decision(
        tmp_path: Path, browser: Any, llama_server_bin: str, artifacts: Path,
        smollm2_gguf: Path) -> None:
    """On the demo as a newcomer sees it (``smollm2_gguf``: SmolLM2 in the cache)."""
    from selenium.webdriver.common.by import By

    port = free_port()
    server = start_server([sys.executable, "-m", "llmstack", "serve", "--demo", "--port",
                           str(port)], port, tmp_path / "serve.log",
                          {"LLMSTACK_LLAMA_SERVER": str(slow_llama_server(tmp_path,
                                                                           llama_server_bin))},
                          ready_path="/v1/models", timeout=60)
    try:
        browser.get(server.base + "/ui")

        def texts(selector: str) -> list[str]:
            """Read in one script: the page re-renders rows, so element handles go stale."""
            return list(browser.execute_script(
                "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)",
                selector))

        def cell(tier: str, cls: str) -> str:
            found = texts(f'tr[data-model="{tier}"] td.{cls}')
            return found[0] if found else ""

        wait_until(lambda: texts("#conn") == ["live"], 15,
                   "the page to follow /api/events")
        wait_until(lambda: cell("agent", "state") == "stopped", 15, "agent shown stopped")
        browser.find_element(By.CSS_SELECTOR, 'button.load[data-model="agent"]').click()
        seen: list[str] = []

        def shows(state: str) -> bool:
            text = cell("agent", "state")
            if not seen or seen[-1] != text:
                seen.append(text)
            return text.startswith(state)

        wait_until(lambda: shows("starting"), 5, "agent shown starting")
        wait_until(lambda: shows("ready"), 60, "agent shown ready")
        assert [s.split()[0] for s in seen][-2:] == ["starting", "ready"], seen
        status, _, body = http("POST", server.base + "/v1/chat/completions", {
            "model": "auto", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200, body
        tier = json.loads(body)["choices"][0]["message"]["name"]

        def decision_rows() -> list[str]:
            return texts("#decisions tr.decision")

        wait_until(lambda: bool(decision_rows()), 10, "a routing decision on the page")
        _, shown_tier, asked, reason, estimate, status_cell, *_ = decision_rows()[0].split("\t")
        assert (shown_tier, asked, status_cell) == (tier, "auto", "200")
        assert "tokens~" in reason and estimate.isdigit()
        swaps = texts("#swaps")[0]
        assert "agent" in swaps and "ready in" in swaps
        memory = texts("#memtext")[0]
        assert "MB resident" in memory and "budget (from " in memory  # and where it came from
        assert texts('pre.log[data-model="agent"]')
        # the page's own Content-Security-Policy blocked nothing it does (bar widths included)
        assert browser.execute_script("return document.querySelector('#membar span').style.width")
        blocked = [e["message"] for e in browser.get_log("browser")
                   if "Content Security Policy" in e["message"]]
        assert not blocked, blocked
        browser.save_screenshot(str(artifacts / "ui-status.png"))
        assert (artifacts / "ui-status.png").stat().st_size > 10_000
    finally:
        stop_server(server)


def test_the_page_lists_hosted_and_multi_machine_tiers_with_backend_health(
        tmp_path: Path, browser: Any) -> None:
    from tests.hosted.conftest import OFFLINE, needs_litellm, start_provider

    needs_litellm()
    backend = start_provider(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    ini = tmp_path / "models.ini"
    ini.write_text(f"[team]\nrole = fast\nbackends = {backend.base}, {dead}\n\n"
                   f"[ultra]\nrole = ultra\nbackend = litellm\nmodel = openai/big\n"
                   f"api_base = {backend.base}/v1\n")
    port = free_port()
    server = start_llmstack(tmp_path / "serve.log", "--models-ini", str(ini), env=OFFLINE,
                            port=port)
    try:
        browser.get(server.base + "/ui")

        def rows() -> dict[str, str]:
            found = browser.execute_script(
                "return [...document.querySelectorAll('#remote-tiers tr[data-tier]')]"
                ".map(e => [e.dataset.tier, e.innerText])")
            return dict(found)

        wait_until(lambda: set(rows()) == {"team", "ultra"}, 15, "the remote tiers listed")
        shown = rows()
        assert f"{backend.base} healthy" in shown["team"] and f"{dead} down" in shown["team"]
        assert "openai/big" in shown["ultra"]
    finally:
        stop_server(server)
        stop_server(backend.server)


STANDIN = Path(__file__).parents[1] / "slot_standin.py"


def test_the_page_shows_the_saved_sessions_and_why_the_cache_is_off(
        tmp_path: Path, browser: Any, swapper: Callable[[str], Server]) -> None:
    """Two models on the slot stand-in (``python -m swapper``): b saves a session when it is
    unloaded; a's build restores nothing, so its first restore turns the cache off for it.
    The page shows the saved sessions against the cap, per model, and a's reason."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    models = "".join(f"""
  {name}:
    cmd: {sys.executable} {STANDIN} --port ${{PORT}} -m {model}{flags}
    sessionCache: true""" for name, flags in (("a", " --restore-broken"), ("b", "")))
    server = swapper(f"sessionCache: {{dir: {tmp_path / 'sessions'}, maxGB: 1, minTokens: 1}}\n"
                     f"models:{models}\n")
    chat = {"max_tokens": 4, "messages": [{"role": "system", "content": "You are a coding agent."},
                                          {"role": "user", "content": "Read the scheduler. " * 20}]}
    for name in ("b", "a"):
        assert server.post("/v1/chat/completions", {**chat, "model": name})[0] == 200
        assert server.post(f"/unload/{name}")[0] == 200
    assert server.post("/v1/chat/completions", {**chat, "model": "a"})[0] == 200  # restores: nothing
    state = json.loads(server.get("/api/state")[2])["sessions"]
    reason = state["off"]["a"]
    assert reason.startswith("restores restore nothing with ") and state["models"]["b"]["sessions"] == 1
    browser.get(server.base + "/ui")

    def texts(selector: str) -> list[str]:
        return list(browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector))

    wait_until(lambda: bool(texts("#sessiontext")) and texts("#sessiontext")[0] != "", 15,
               "the session cache shown")
    assert texts("#sessiontext") == [f"{state['sessions']} saved, {state['bytes'] / 1e6:.1f} MB of "
                                     f"1.00 GB ({tmp_path / 'sessions'})"]
    assert texts('.session-off[data-model="a"]') == [f"off for a: {reason}"]
    on_disk = f"{state['models']['b']['bytes'] / 1e6:.1f} MB"
    not_held = "\u2013"  # b is not running: it holds no session now
    assert texts('#session-models tr[data-model="b"]') == [f"b\t1\t{on_disk}\t{not_held}"]
