"""Multi-machine tiers against loopback provider fakes: keys, affinity, health and fallback."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import Server, free_port, stop_server
from tests.hosted.conftest import Provider, needs_litellm, post, start_provider

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("backends")
    started = [start_provider(directory) for _ in range(3)]
    yield started
    for fake in started:
        stop_server(fake.server)


@pytest.fixture(scope="module")
def front(fakes: list[Provider], serve_ini) -> Server:
    needs_litellm()
    dead = f"http://127.0.0.1:{free_port()}"
    return serve_ini(f"""\
[team]
role = fast
backends = {fakes[0].base}, {fakes[1].base}

[gone]
backends = {dead}
fallback = team

[trio]
backends = {", ".join(fake.base for fake in fakes)}
""", {"LLMSTACK_BACKENDS_API_KEY": "team-key"})


def ask(front: Server, model: str = "team", session: str = "") -> tuple[int, dict[str, str], dict]:
    status, headers, body = post(front.base, CHAT, {"model": model, "messages": HI},
                                 {"x-session-id": session} if session else {})
    return status, headers, json.loads(body)


def test_backends_get_the_team_key_and_the_tier_name(front, fakes) -> None:
    status, headers, _ = ask(front)
    assert status == 200 and headers["x-llmstack-backend"] in (fakes[0].base, fakes[1].base)
    entry = next(e for fake in fakes for e in fake.log())
    assert entry["authorization"] == "Bearer team-key" and entry["body"]["model"] == "team"
    assert "team-key" not in front.output()


def test_a_session_stays_on_one_backend(front) -> None:
    for session in ("s1", "s2", "s3", "s4"):
        homes = Counter(ask(front, session=session)[1]["x-llmstack-backend"] for _ in range(6))
        assert len(homes) == 1, homes


def test_models_show_backend_health_and_a_dead_tier_falls_back(front, fakes) -> None:
    rows = {r["id"]: r for r in json.loads(front.get("/v1/models")[2])["data"]}
    assert [b["healthy"] for b in rows["team"]["backends"]] == [True, True]
    assert [b["healthy"] for b in rows["gone"]["backends"]] == [False]
    status, _, body = ask(front, "gone")
    assert status == 200, body
    assert body["choices"][0]["message"]["name"] == "team"  # answered by the fallback tier
    events = json.loads(front.get("/events")[2])
    assert any(e.get("kind") == "fallback" and e.get("from_tier") == "gone" for e in events), events


def test_anthropic_messages_reach_a_multi_machine_tier(front, fakes) -> None:
    before = [len(fake.log()) for fake in fakes]
    status, _, body = post(front.base, "/v1/messages",
                           {"model": "team", "max_tokens": 20, "messages": HI})
    assert status == 200, body
    assert json.loads(body)["content"][0]["text"] == "hello from the fake provider"
    [sent] = [e for fake, n in zip(fakes, before, strict=True) for e in fake.log()[n:]]
    assert sent["path"] == "/v1/chat/completions"  # the backends are asked in OpenAI form
    assert sent["body"]["model"] == "team" and sent["authorization"] == "Bearer team-key"


def test_idle_backends_share_new_requests(front, fakes) -> None:
    """least-busy breaks ties at random. One client asking 150 times in turn finds the 3
    backends idle each time: when ties went to the first that was 150 / 0 / 0; at random,
    57 / 54 / 39, 61 / 44 / 45, 50 / 43 / 57 (three runs). 300 requests from 6 clients at
    once keep each backend busy, so least-busy itself spreads them, as before: 105 / 102 /
    93, 98 / 101 / 101, 98 / 106 / 96 (before: 106 / 100 / 94)."""
    def client(count: int) -> list[str]:
        return [ask(front, "trio")[1]["x-llmstack-backend"] for _ in range(count)]

    alone = Counter(client(150))
    assert sorted(alone) == sorted(fake.base for fake in fakes), alone
    assert min(alone.values()) >= 25, alone  # a third is 50 (25: 4 standard deviations off)
    with ThreadPoolExecutor(6) as pool:
        crowd = Counter(url for answers in pool.map(client, [50] * 6) for url in answers)
    assert min(crowd.values()) >= 70, crowd  # a third is 100
