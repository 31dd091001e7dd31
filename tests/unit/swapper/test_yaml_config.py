"""llama-swap config.yaml loading."""

from __future__ import annotations

import textwrap

import pytest

from swapper.config import ConfigError, Group
from swapper.solver import compile_plan
from swapper.yaml_config import load_yaml_config, parse_yaml_config
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "llama-swap-config.yaml"


def parse(text: str):
    return parse_yaml_config(textwrap.dedent(text), "c.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as error:
        parse(text)
    return str(error.value)


def test_macros_expand_in_order_with_model_overrides():
    config = parse("""
        macros:
          server: srv --port ${PORT}
          ctx: 4096
          flags: "${server} -c ${ctx}"
          ttl: 300
        models:
          m1:
            macros:
              ctx: 8192
            cmd: ${flags} --alias ${MODEL_ID}
            ttl: ${ttl}
            metadata: {label: "${MODEL_ID} at ${ctx}"}
          m2:
            cmd: ${flags}
            cmdStop: kill ${PID}
        """)
    m1, m2 = config.models["m1"], config.models["m2"]
    assert m1.cmd == ("srv", "--port", "${PORT}", "-c", "8192", "--alias", "m1")
    assert m1.ttl == 300
    assert m1.metadata == {"label": "m1 at 8192"}
    assert m2.cmd == ("srv", "--port", "${PORT}", "-c", "4096")
    assert m2.cmd_stop == ("kill", "${PID}")


def test_lone_macro_keeps_its_type():
    config = parse("""
        macros: {keep: false, limit: 3}
        models:
          m: {cmd: "srv ${PORT}", unlisted: "${keep}", concurrencyLimit: "${limit}"}
        """)
    assert config.models["m"].unlisted is False
    assert config.models["m"].concurrency_limit == 3


def test_macro_using_a_later_macro_is_unknown():
    message = error_of("""
        macros:
          a: "x ${b}"
          b: y
        models:
          m: {cmd: "srv ${a}"}
        """)
    assert message == "c.yaml:6: models.m.cmd: unknown macro '${b}'"


@pytest.mark.parametrize(
    ("macros", "message"),
    [
        ("PORT: 1", "macros.PORT: PORT is a reserved macro name"),
        ("a b: 1", "macros.a b: macro names are"),
        ("a: '${a}x'", "macros.a: macro refers to itself"),
        ("a: [1]", "macros.a: expected a string, number or boolean"),
    ],
)
def test_bad_macro_definitions(macros, message):
    assert message in error_of(f"macros: {{{macros}}}\nmodels: {{}}\n")


def test_port_and_pid_only_where_filled():
    assert error_of("""
        models:
          m: {cmd: "srv ${PORT}", checkEndpoint: "/h/${PORT}"}
        """) == "c.yaml:3: models.m.checkEndpoint: ${PORT} is only filled in cmd and proxy"
    assert "models.m.cmd: ${PID} is only filled in cmdStop" in error_of("""
        models:
          m: {cmd: "srv ${PID}"}
        """)


def test_env_macro(monkeypatch):
    monkeypatch.setenv("SWAPPER_TEST_BIN", "/opt/bin/llama server")
    monkeypatch.setenv("SWAPPER_TEST_KEY", "sk-1")
    config = parse("""
        macros: {bin: "'${env.SWAPPER_TEST_BIN}'"}
        apiKeys: ["${env.SWAPPER_TEST_KEY}"]
        models:
          m:
            cmd: ${bin} --port ${PORT}
            env: ["HOME=${env.SWAPPER_TEST_BIN}"]
        """)
    assert config.models["m"].cmd == ("/opt/bin/llama server", "--port", "${PORT}")
    assert config.models["m"].env == {"HOME": "/opt/bin/llama server"}
    assert config.api_keys == ("sk-1",)


def test_unset_env_macro_fails(monkeypatch):
    monkeypatch.delenv("SWAPPER_TEST_UNSET", raising=False)
    message = error_of("""
        models:
          m:
            cmd: ${env.SWAPPER_TEST_UNSET}/llama-server
        """)
    assert message == (
        "c.yaml:4: models.m.cmd: environment variable 'SWAPPER_TEST_UNSET' is not set"
    )


def test_unsupported_keys_are_reported_with_their_path():
    config = parse("""
        logLevel: debug
        sendLoadingState: true
        peers: {remote: {proxy: "http://x"}}
        selectors: {auto: {strategy: warm, targets: [llama]}}
        routing: {scheduler: {settings: {fifo: {priority: {llama: 1}}}}}
        models:
          llama:
            cmd: srv ${PORT}
            sendLoadingState: false
            filters: {setParamsByID: {"llama:hot": {temperature: 1}}}
        """)
    assert config.extra["unsupported"] == [
        "logLevel: not supported, ignored",
    ]  # sendLoadingState is supported (global true, the model's false wins)
    assert config.models["llama"].cmd == ("srv", "${PORT}")
    assert config.models["llama"].send_loading_state is False
    assert config.priority == {"llama": 1}
    assert config.selectors["auto"].targets == ("llama",)
    assert config.resolve("llama:hot") == "llama"


def test_legacy_and_routing_router_together_fail():
    message = error_of("""
        models:
          a: {cmd: "srv ${PORT}"}
        matrix: {sets: {s: a}}
        routing: {router: {use: matrix, settings: {matrix: {sets: {s: a}}}}}
        """)
    assert message.startswith("c.yaml:5: routing: cannot be used with the legacy top-level")


def test_routing_router_matrix_and_groups():
    models = """
        models:
          a: {cmd: "srv ${PORT}"}
          b: {cmd: "srv ${PORT}"}
        """
    matrix = parse(models + """
        routing:
          router:
            use: matrix
            settings:
              matrix: {sets: {ab: "a & b"}}
              groups: {g: {members: [a]}}
        """)
    assert matrix.matrix is not None and matrix.matrix.sets == {"ab": "a & b"}
    assert matrix.extra["unsupported"] == [
        "routing.router.settings.groups: unused because routing.router.use is matrix, ignored"
    ]
    groups = parse(models + """
        routing:
          router:
            settings:
              groups: {g: {swap: false, members: [a, b]}}
        """)
    assert groups.matrix is None
    assert groups.groups == (Group("g", ("a", "b"), swap=False),)


def test_bad_matrix_fails_at_load_with_its_line():
    message = error_of("""
        models:
          a: {cmd: "srv ${PORT}"}
        routing:
          router:
            use: matrix
            settings:
              matrix:
                sets:
                  plan_with_fast: "a & q"
        """)
    assert message == "c.yaml:10: matrix.sets.plan_with_fast: unknown name 'q'"


def test_bad_types_name_the_key_and_line():
    assert error_of("""
        models:
          m:
            cmd: srv
            ttl: soon
        """) == "c.yaml:5: models.m.ttl: expected a number, got 'soon'"
    assert "c.yaml:3: models.m.aliases: expected a list" in error_of("""
        models:
          m: {cmd: srv, aliases: x}
        """)
    assert error_of("models: {m: {}}") == "c.yaml:1: models.m.cmd: required"
    assert error_of("models: {m: {cmd: '  '}}") == "c.yaml:1: models.m.cmd: empty command"
    assert "invalid YAML" in error_of("models: [")


def test_command_comments_and_continuations():
    config = parse("""
        models:
          m:
            cmd: |
              srv --port ${PORT} \\
                # ${unknown} in a comment is ignored
                --model "/models/a b.gguf"
              -c 1024
        """)
    assert config.models["m"].cmd == ("srv", "--port", "${PORT}", "--model", "/models/a b.gguf",
                                      "-c", "1024")


def test_model_fields_and_defaults():
    config = parse("""
        healthCheckTimeout: 5
        globalTTL: 60
        unloadTimeout: 3
        startPort: 9000
        models:
          a:
            cmd: srv ${PORT}
            proxy: http://127.0.0.1:${PORT}/v1
            checkEndpoint: none
            useModelName: org/a
            env: ["A=1", "B=x=y"]
            filters: {strip_params: "temperature, model, top_p,", setParams: {model: x, seed: 1}}
          b:
            cmd: srv --port 8081
            proxy: http://127.0.0.1:8081
            ttl: 0
            unloadTimeout: 1
            concurrencyLimit: 2
            memoryMB: 512
        """)
    a, b = config.models["a"], config.models["b"]
    assert config.health_check_timeout == 15
    assert config.start_port == 9000
    assert (a.ttl, a.unload_timeout, a.concurrency_limit) == (60, 3, 10)
    assert (b.ttl, b.unload_timeout, b.concurrency_limit, b.memory_mb) == (0, 1, 2, 512)
    assert a.proxy == "http://127.0.0.1:${PORT}/v1"
    assert a.check_endpoint == "none"
    assert a.use_model_name == "org/a"
    assert a.env == {"A": "1", "B": "x=y"}
    assert a.filters.strip_params == ("temperature", "top_p")
    assert a.filters.set_params == {"seed": 1}


def test_proxy_port_needs_cmd_port():
    assert error_of("models: {m: {cmd: 'srv --port 9', proxy: 'http://h:${PORT}'}}") == (
        "c.yaml:1: models.m.proxy: uses ${PORT} but cmd does not; set the proxy URL"
    )
    # llama-swap's own example has such a model: the default proxy only warns.
    assert parse("models: {m: {cmd: 'srv --port 9'}}").extra["unsupported"] == [
        "models.m.cmd: does not use ${PORT} and no proxy is set: "
        "requests to this model will fail until proxy names its port"]


def test_aliases_are_globally_unique():
    assert error_of("""
        models:
          a: {cmd: "srv ${PORT}", aliases: [x]}
          b: {cmd: "srv ${PORT}", aliases: [y, x]}
        """) == "c.yaml:4: models.b.aliases[1]: 'x' is an alias of a"
    assert "'a' is a model id" in error_of("""
        models:
          a: {cmd: "srv ${PORT}"}
          b: {cmd: "srv ${PORT}", aliases: [a]}
        """)


def test_preload_resolves_aliases_and_skips_unknown_models_with_a_warning():
    text = """
        models:
          a: {cmd: "srv ${PORT}", aliases: [small]}
        hooks: {on_startup: {preload: [small, " ", %s]}}
        """
    assert parse(text % "a").preload == ("a", "a")
    config = parse(text % "nope")
    assert config.preload == ("a",)
    assert config.extra["unsupported"] == [
        "hooks.on_startup.preload[2]: unknown model 'nope', not preloaded"]


def test_memory_budget_is_checked_at_load():
    message = error_of("""
        memoryBudgetMB: 1000
        models:
          a: {cmd: "srv ${PORT}", memoryMB: 600}
          b: {cmd: "srv ${PORT}", memoryMB: 600}
        groups:
          both: {swap: false, members: [a, b]}
        """)
    assert message == "c.yaml:7: groups.both: a + b need 1200 MB, 200 MB over memory_budget_mb 1000"


def test_load_yaml_config_reads_a_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("models:\n  m:\n    cmd: srv ${PORT}\n    ttl: -2\n")
    with pytest.raises(ConfigError, match=r"config.yaml:4: models.m.ttl: must be >= 0"):
        load_yaml_config(path)


def test_example_config_loads(monkeypatch):
    monkeypatch.setenv("LLAMA_SERVER", "/opt/llama/llama-server")
    monkeypatch.setenv("MODELS_DIR", "/models")
    config = load_yaml_config(EXAMPLE)
    assert config.extra["unsupported"] == []
    assert set(config.models) == {"fast", "a", "b"}
    fast = config.models["fast"]
    assert fast.cmd == (
        "/opt/llama/llama-server", "--host", "127.0.0.1", "--port", "${PORT}",
        "-t", "1", "-c", "1024", "--no-warmup", "--alias", "fast", "-m", "/models/tiny-a.gguf",
    )
    assert config.models["b"].cmd[-1] == "/models/tiny-c.gguf"
    assert config.resolve("small") == "fast"
    assert (fast.ttl, config.models["a"].ttl, config.models["b"].ttl) == (0, 300, 900)
    assert config.preload == ("fast",)
    plan = compile_plan(config)
    assert plan.solve("a", frozenset({"fast"})).evict == frozenset()
    assert plan.solve("b", frozenset({"fast", "a"})).evict == frozenset({"a"})
    assert not plan.fits(frozenset({"a", "b"}))


def test_max_queue_wait_defaults_to_ten_seconds_and_must_not_be_negative():
    assert parse("models:\n  m:\n    cmd: srv ${PORT}\n").max_queue_wait == 10.0
    assert parse("maxQueueWait: 2.5\nmodels:\n  m:\n    cmd: srv ${PORT}\n").max_queue_wait == 2.5
    assert "maxQueueWait" in error_of("maxQueueWait: -1\nmodels:\n  m:\n    cmd: srv ${PORT}\n")


def test_a_peers_set_params_by_id_keys_take_the_global_macros_not_a_models():
    config = parse("""
        macros: {level: global}
        models:
          local:
            cmd: srv --port ${PORT}
            macros: {level: own}
        peers:
          remote:
            proxy: http://x
            models: [big]
            filters: {setParamsByID: {"big:${level}": {temperature: 0}}}
    """)
    assert config.resolve("big:global") == "remote/big"
    assert config.resolve("big:own") is None
