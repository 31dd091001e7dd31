"""Selectors, profiles and setParamsByID with llama-swap's meaning.

Test names mirror llama-swap's own (internal/server/selector_test.go,
internal/server/profiles_test.go, internal/config/{selectors,profile,filters,
model_config}_test.go and internal/router/scheduler/fifo_test.go): the pure
rules first, then the same behaviour over HTTP through ``python -m swapper``.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from swapper.config import ConfigError, Selector, SwapperConfig
from swapper.errors import ApiError
from swapper.scheduler import Status
from swapper.selectors import NameRouter, SpilloverTracker, strategy_pin, strategy_warm
from swapper.yaml_config import parse_yaml_config
from tests.conftest import FAKE_UPSTREAM, fake_cmd, free_port, http, start_server, stop_server

CHAT = "/v1/chat/completions"


def parse(text: str) -> SwapperConfig:
    return parse_yaml_config(textwrap.dedent(text), "c.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as error:
        parse(text)
    return str(error.value)


def no_lookup(name: str) -> str:
    return name


# ------------------------------------------------------------------ strategies (pure)


def test_selector_strategy_pin() -> None:
    assert strategy_pin(Selector("s", "pin", ("first", "second"))) == "first"


def test_selector_strategy_warm() -> None:
    selector = Selector("s", "warm", ("a", "b", "c"))
    assert strategy_warm(selector, no_lookup, {"a": Status.STARTING, "c": Status.READY}) == "c"
    assert strategy_warm(selector, no_lookup, {"a": Status.STARTING, "b": Status.READY,
                                               "c": Status.READY}) == "b"
    assert strategy_warm(selector, no_lookup, {"a": Status.STARTING, "b": Status.STARTING}) == "a"
    assert strategy_warm(selector, no_lookup, {}) == "a"


def test_selector_strategy_spillover() -> None:
    pool = Selector("pool", "spillover", ("a", "b", "c"), spillover=2)
    tracker = SpilloverTracker()
    picks = [tracker.pick(pool, no_lookup, {}) for _ in range(3)]
    assert picks == ["a", "a", "b"]
    tracker.release("pool", "a")
    everyone_ready = dict.fromkeys("abc", Status.READY)
    assert tracker.pick(pool, no_lookup, everyone_ready) == "c"  # the least busy


def test_selector_middleware_all_spillover_targets_stopping() -> None:
    pool = Selector("pool", "spillover", ("a", "b"))
    with pytest.raises(ApiError) as error:
        SpilloverTracker().pick(pool, no_lookup, dict.fromkeys("ab", Status.STOPPING))
    assert error.value.status == 503
    assert "no available spillover targets" in error.value.message


def test_selector_middleware_spillover_reservations() -> None:
    config = parse(f"""
        models:
          a: {{cmd: "{fake_cmd()}"}}
          b: {{cmd: "{fake_cmd()}"}}
        selectors:
          pool: {{strategy: spillover, targets: [a, b]}}
        """)
    names = NameRouter(config)
    first = names.route("pool", {})
    assert first.model == "a"
    assert names.route("pool", {"a": Status.STARTING}).model == "b"  # a is full (1)
    names.release(first)
    assert names.route("pool", {"a": Status.READY, "b": Status.STARTING}).model == "a"


# ------------------------------------------------------------------ config


SELECTORS = f"""
    models:
      a: {{cmd: "{fake_cmd()}", aliases: [alpha]}}
      b: {{cmd: "{fake_cmd()}"}}
    selectors:
      %s
    """


def test_config_selectors_load_defaults_and_fields() -> None:
    config = parse(SELECTORS % "s: {strategy: spillover, targets: [alpha, b], name: S}")
    assert config.selectors["s"] == Selector("s", "spillover", ("alpha", "b"), 1, "S")


def test_config_selectors_validation() -> None:
    assert "name conflicts with model id 'a'" in error_of(
        SELECTORS % "a: {strategy: pin, targets: [b]}")
    assert "name conflicts with model alias 'alpha'" in error_of(
        SELECTORS % "alpha: {strategy: pin, targets: [b]}")
    assert "expected one of warm, pin, spillover, got 'best'" in error_of(
        SELECTORS % "s: {strategy: best, targets: [b]}")
    assert "must contain at least one entry" in error_of(SELECTORS % "s: {strategy: pin}")
    assert "selectors do not chain" in error_of(
        SELECTORS % "{s: {strategy: pin, targets: [t]}, t: {strategy: pin, targets: [a]}}")
    assert "must be >= 1" in error_of(
        SELECTORS % "s: {strategy: spillover, targets: [a], settings: {spillover: 0}}")


def test_config_selectors_undefined_target_is_warned_and_ignored() -> None:
    """More tolerant than llama-swap: its own example names models it never defines."""
    config = parse(SELECTORS % "s: {strategy: warm, targets: [ghost, b]}")
    assert config.selectors["s"].targets == ("b",)
    assert config.extra["unsupported"] == [
        "selectors.s.targets[0]: undefined model 'ghost', ignored"]
    empty = parse(SELECTORS % "s: {strategy: pin, targets: [ghost]}")
    with pytest.raises(ApiError) as error:  # only a request that needs it fails
        NameRouter(empty).route("s", {})
    assert error.value.status == 404


def test_config_profiles_load_and_resolve() -> None:
    config = parse(f"""
        models:
          real: {{cmd: "{fake_cmd()}"}}
          hidden: {{cmd: "{fake_cmd()}"}}
        profiles:
          coding:
            description: for code
            pins: {{code: real, disabled: ~, real: hidden, ghost-pin: ghost}}
        """)
    assert config.profiles["coding"].pins == {"code": "real", "disabled": None, "real": "hidden"}
    assert config.extra["unsupported"] == [
        "profiles.coding.pins.ghost-pin: undefined model 'ghost', ignored"]
    names = NameRouter(config)
    assert names.route("code", {}).model == "code"  # no profile active: not a name
    names.set_profile("coding")
    assert names.route("code", {}).model == "real"
    assert names.route("real", {}).model == "hidden"
    with pytest.raises(ApiError) as error:
        names.route("disabled", {})
    assert error.value.status == 404


def test_config_profiles_do_not_chain() -> None:
    config = parse(f"""
        models:
          a: {{cmd: "{fake_cmd()}"}}
          b: {{cmd: "{fake_cmd()}"}}
          c: {{cmd: "{fake_cmd()}"}}
        profiles:
          p: {{pins: {{a: b, b: c}}}}
        """)
    names = NameRouter(config)
    names.set_profile("p")
    assert names.route("a", {}).model == "b"


def test_config_profiles_validation() -> None:
    assert "must contain at least one entry" in error_of(f"""
        models: {{a: {{cmd: "{fake_cmd()}"}}}}
        profiles: {{p: {{description: x}}}}
        """)
    legacy = parse(f"""
        models: {{a: {{cmd: "{fake_cmd()}"}}}}
        profiles: {{aider: [a]}}
        """)
    assert legacy.profiles == {}
    assert "legacy list syntax" in legacy.extra["unsupported"][0]


def test_config_selectors_profile_targets_selector() -> None:
    config = parse(SELECTORS % "s: {strategy: pin, targets: [b]}\n"
                   "    profiles: {p: {pins: {fav: s}}}")
    names = NameRouter(config)
    names.set_profile("p")
    assert names.route("fav", {}).model == "b"  # the profile runs first, then the selector


def test_filters_sanitized_set_params_by_id() -> None:
    config = parse(f"""
        models:
          m:
            cmd: "{fake_cmd()}"
            filters:
              setParamsByID:
                "${{MODEL_ID}}:high": {{model: other, reasoning_effort: high}}
        """)
    assert config.models["m"].filters.set_params_by_id == {"m:high": {"reasoning_effort": "high"}}


def test_config_set_params_by_id_auto_alias() -> None:
    config = parse(f"""
        models:
          m:
            cmd: "{fake_cmd()}"
            filters: {{setParamsByID: {{"${{MODEL_ID}}": {{t: 1}}, "${{MODEL_ID}}:low": {{t: 0}}}}}}
        """)
    assert config.resolve("m:low") == "m"
    routed = NameRouter(config).route("m:low", {})
    assert (routed.model, dict(routed.params)) == ("m", {"t": 0})
    assert dict(NameRouter(config).route("m", {}).params) == {"t": 1}


def test_config_set_params_by_id_auto_alias_conflict_with_model_id() -> None:
    assert "'b' is a model id" in error_of(f"""
        models:
          a: {{cmd: "{fake_cmd()}", filters: {{setParamsByID: {{b: {{t: 1}}}}}}}}
          b: {{cmd: "{fake_cmd()}"}}
        """)


def test_config_set_params_by_id_auto_alias_conflict_with_other_model() -> None:
    assert "'x' is an alias of a" in error_of(f"""
        models:
          a: {{cmd: "{fake_cmd()}", aliases: [x]}}
          b: {{cmd: "{fake_cmd()}", filters: {{setParamsByID: {{x: {{t: 1}}}}}}}}
        """)


def test_config_routing_fifo_priority_unknown_model() -> None:
    config = parse(f"""
        models: {{a: {{cmd: "{fake_cmd()}", aliases: [alpha]}}}}
        routing: {{scheduler: {{settings: {{fifo: {{priority: {{alpha: 3, ghost: 1}}}}}}}}}}
        """)
    assert config.priority == {"a": 3}
    assert config.extra["unsupported"] == [
        "routing.scheduler.settings.fifo.priority.ghost: undefined model 'ghost', ignored"]


# ------------------------------------------------------------------ over HTTP


@pytest.fixture
def peer(tmp_path):
    """A fake OpenAI-compatible server standing in for a remote peer."""
    port = free_port()
    server = start_server([sys.executable, str(FAKE_UPSTREAM), "--port", str(port)], port,
                          tmp_path / "peer.log")
    yield server
    stop_server(server)


def chat(server, model: str) -> tuple[int, dict]:
    status, _, body = server.post(CHAT, {"model": model, "messages": []})
    return status, json.loads(body)


def test_server_profile_api_selectors_set_params_by_id_and_peers(swapper, peer) -> None:
    server = swapper(textwrap.dedent(f"""
        models:
          a:
            cmd: {fake_cmd()}
            aliases: [alpha]
            capabilities: {{in: [text], tools: true, context: 4096}}
            metadata: {{port: "${{PORT}}"}}
            filters:
              setParams: {{temperature: 0.5}}
              setParamsByID: {{"${{MODEL_ID}}:hot": {{temperature: 1.5}}}}
          b: {{cmd: "{fake_cmd()}"}}
        selectors:
          warm-one: {{strategy: warm, targets: [b, a]}}
        profiles:
          coding: {{description: code, pins: {{code: a, image-gen: ~}}}}
        peers:
          remote: {{proxy: "{peer.base}", apiKey: sk-peer, models: [m1]}}
        """))
    status, answer = chat(server, "a:hot")
    assert status == 200 and answer["received"]["temperature"] == 1.5
    assert chat(server, "a")[1]["received"]["temperature"] == 0.5
    # a is ready, b is not: the warm selector takes a without loading b.
    assert chat(server, "warm-one")[0] == 200
    assert set(server.running()) == {"a"}

    status, _, body = server.get("/api/profiles")
    assert json.loads(body) == {"active": None, "profiles": [
        {"name": "coding", "description": "code", "pins": {"code": "a", "image-gen": ""}}]}
    assert chat(server, "code")[0] == 404
    assert http("PUT", server.base + "/api/profiles/active", {"name": "coding"})[0] == 200
    assert chat(server, "code")[0] == 200
    assert chat(server, "image-gen")[0] == 404
    assert http("PUT", server.base + "/api/profiles/active", {"name": "missing"})[0] == 404
    assert json.loads(server.get("/api/profiles")[2])["active"] == "coding"
    assert http("PUT", server.base + "/api/profiles/active", {"name": None})[0] == 200
    assert json.loads(server.get("/api/profiles")[2])["active"] is None

    for name in ("remote/m1", "m1"):  # a bare name only one peer has routes to it
        status, answer = chat(server, name)
        assert status == 200 and answer["received"]["model"] == "m1"
        assert answer["received_keys"] == ["Bearer sk-peer", "sk-peer"]

    listed = {row["id"]: row for row in json.loads(server.get("/v1/models")[2])["data"]}
    assert "alpha" not in listed and "a:hot" not in listed  # includeAliasesInList: false
    assert listed["a"]["capabilities"] == {"in": ["text"], "tools": True, "context": 4096}
    assert listed["a"]["meta"]["port"] == server.running()["a"]["port"]
    assert listed["warm-one"]["selector"] == {"strategy": "warm", "targets": ["b", "a"]}
    assert "remote/m1" in listed


def test_spillover_release_after_a_reload_removed_the_selector() -> None:
    config = parse(SELECTORS % "pool: {strategy: spillover, targets: [a, b]}")
    names = NameRouter(config)
    routed = names.route("pool", {})
    names.config = parse(SELECTORS % "other: {strategy: pin, targets: [a]}")
    names.release(routed)  # the request ends after the reload: no KeyError
    assert names.spillover.in_flight[("pool", "a")] == 0


def test_include_aliases_in_list() -> None:
    from swapper.listing import model_rows

    text = f"""
        includeAliasesInList: %s
        models:
          m:
            cmd: "{fake_cmd()}"
            aliases: [mm]
            filters: {{setParamsByID: {{"m:low": {{t: 0}}}}}}
        """
    assert [r["id"] for r in model_rows(parse(text % "false"), frozenset(), lambda m: None)] == [
        "m"]
    rows = model_rows(parse(text % "true"), frozenset(), lambda m: None)
    assert [(r["id"], r.get("alias_of")) for r in rows] == [
        ("m", None), ("mm", "m"), ("m:low", "m")]


def test_upstream_ignore_paths_never_start_a_model(swapper) -> None:
    """llama-swap's default ignorePaths: a web UI's static files do not cause a swap."""
    server = swapper(f"models:\n  a:\n    cmd: {fake_cmd()}\n")
    status, _, body = server.get("/upstream/a/static/app.js")
    assert status == 409 and b"upstream.ignorePaths" in body
    assert server.running() == {}
    assert server.get("/upstream/a/health")[0] == 200  # any other path loads it
    assert server.get("/upstream/a/static/app.js")[0] == 404  # now forwarded (the fake's 404)


def test_upstream_ignore_paths_are_checked_at_load() -> None:
    assert "upstream.ignorePaths[0]: invalid regular expression" in error_of(f"""
        models: {{a: {{cmd: "{fake_cmd()}"}}}}
        upstream: {{ignorePaths: ["(unclosed"]}}
        """)
    assert parse(f"""
        models: {{a: {{cmd: "{fake_cmd()}"}}}}
        upstream: {{ignorePaths: ["^/ws$"]}}
        """).upstream_ignore_paths == ("^/ws$",)
