"""The scheduler's rules, one test each: pure state machine, no processes, no sleeps."""

from __future__ import annotations

from swapper.scheduler import (
    Fail, Grant, ModelLimits, Reject, Scheduler, StartSwap, Status, Stop,
)


def alone(target: str, running: frozenset[str]) -> frozenset[str]:
    """Every model runs alone, except 'fast', which co-resides with anything."""
    if target == "fast":
        return frozenset()
    return frozenset(m for m in running if m != "fast")


def make(limit: int = 10, **extra: ModelLimits) -> Scheduler:
    models = {m: ModelLimits(limit) for m in ("a", "b", "c", "fast")}
    models.update(extra)
    return Scheduler(models, alone)


def ready(s: Scheduler, model: str, req: int) -> None:
    """Bring ``model`` up through a request ``req`` that then finishes."""
    assert s.request(req, model) == [StartSwap(model, s.swaps.get(model, frozenset()) or _ev(s, model))]
    assert s.swap_done(model) == [Grant(req, model)]
    s.finished(req)


def _ev(s: Scheduler, model: str) -> frozenset[str]:
    return alone(model, s.running() - {model})


def test_unknown_model_is_404() -> None:
    assert make().request(1, "nope") == [Reject(1, 404, "model 'nope' not found")]


def test_over_concurrency_limit_is_429_counting_queued_and_in_flight() -> None:
    s = make(limit=2)
    assert s.request(1, "a") == [StartSwap("a", frozenset())]
    assert s.request(2, "a") == []  # joins the load: counts as reserved
    effects = s.request(3, "a")
    assert len(effects) == 1 and isinstance(effects[0], Reject) and effects[0].status == 429


def test_requests_join_an_in_flight_load_of_the_same_model() -> None:
    s = make()
    assert s.request(1, "a") == [StartSwap("a", frozenset())]
    assert s.request(2, "a") == []
    assert s.request(3, "a") == []
    assert s.swap_done("a") == [Grant(1, "a"), Grant(2, "a"), Grant(3, "a")]


def test_fast_path_when_ready() -> None:
    s = make()
    ready(s, "a", 1)
    assert s.request(2, "a") == [Grant(2, "a")]
    assert s.in_flight["a"] == 1


def test_swap_evicts_what_the_solver_says() -> None:
    s = make()
    ready(s, "a", 1)
    assert s.request(2, "b") == [StartSwap("b", frozenset({"a"}))]
    assert s.status["a"] is Status.STOPPING and s.status["b"] is Status.STARTING
    assert s.swap_done("b") == [Grant(2, "b")]
    assert s.status["a"] is Status.STOPPED


def test_queue_when_colliding_with_an_in_flight_swap() -> None:
    s = make()
    assert s.request(1, "a") == [StartSwap("a", frozenset())]
    assert s.request(2, "b") == []  # b would evict a, which is loading
    assert s.queued() == [(2, "b")]
    assert s.swap_done("a") == [Grant(1, "a")]  # b still waits: a is serving
    assert s.finished(1) == [StartSwap("b", frozenset({"a"}))]


def test_never_evicts_a_model_with_requests_in_flight() -> None:
    s = make()
    ready(s, "a", 1)
    assert s.request(2, "a") == [Grant(2, "a")]
    assert s.request(3, "b") == []
    assert s.status["a"] is Status.READY
    assert s.finished(2) == [StartSwap("b", frozenset({"a"}))]


def test_swaps_with_disjoint_evictions_run_in_parallel() -> None:
    s = make()
    assert s.request(1, "fast") == [StartSwap("fast", frozenset())]
    assert s.request(2, "a") == [StartSwap("a", frozenset())]
    assert set(s.swaps) == {"fast", "a"}


def test_overlapping_evictions_do_not_run_in_parallel() -> None:
    s = make()
    ready(s, "a", 1)
    assert s.request(2, "b") == [StartSwap("b", frozenset({"a"}))]
    assert s.request(3, "c") == []  # c would also evict b (loading): queued


def test_collation_serves_a_b_c_a_b_c_as_a_a_b_b_c_c() -> None:
    s = make()
    served: list[str] = []
    for req, model in enumerate("abcabc", start=1):
        effects = s.request(req, model)
        assert all(isinstance(e, StartSwap) for e in effects)
    pending = s.swap_done("a")
    while pending:
        effect = pending.pop(0)
        if isinstance(effect, Grant):
            served.append(effect.model)
            pending += s.finished(effect.req)
        elif isinstance(effect, StartSwap):
            pending += s.swap_done(effect.model)
    assert served == list("aabbcc")


def test_cancelled_queued_waiter_frees_its_reservation() -> None:
    s = make(limit=1)
    ready(s, "a", 1)
    assert s.request(2, "a") == [Grant(2, "a")]
    assert s.request(3, "b") == []
    assert s.reserved["b"] == 1
    s.cancel(3)
    assert s.reserved["b"] == 0 and s.queued() == []
    assert s.request(4, "b") == []  # capacity is back (would be 429 otherwise)


def test_cancelled_load_waiter_frees_its_reservation_and_the_load_continues() -> None:
    s = make(limit=1)
    assert s.request(1, "a") == [StartSwap("a", frozenset())]
    s.cancel(1)
    assert s.reserved["a"] == 0 and "a" in s.swaps
    assert s.swap_done("a") == []
    assert s.status["a"] is Status.READY


def test_failed_load_fails_all_waiters_with_its_error() -> None:
    s = make()
    s.request(1, "a")
    s.request(2, "a")
    assert s.swap_done("a", "exited with code 1", 502) == [
        Fail(1, 502, "exited with code 1"), Fail(2, 502, "exited with code 1")]
    assert s.status["a"] is Status.STOPPED and s.reserved["a"] == 0


def test_ttl_expiry_stops_only_an_idle_model() -> None:
    s = make()
    ready(s, "a", 1)
    s.request(2, "a")
    assert s.idle_timeout("a") == []  # in flight
    s.finished(2)
    assert s.idle_timeout("a") == [Stop("a")]


def test_request_racing_a_ttl_unload_restarts_the_model() -> None:
    """llama-swap #946: a request arriving while the model stops must not hang."""
    s = make()
    ready(s, "a", 1)
    assert s.idle_timeout("a") == [Stop("a")]
    assert s.request(2, "a") == []  # queued behind the stop, not dropped
    assert s.stopped("a") == [StartSwap("a", frozenset())]
    assert s.swap_done("a") == [Grant(2, "a")]


def test_unload_fails_queued_and_waiting_requests() -> None:
    s = make()
    s.request(1, "a")
    effects = s.unload("a")
    assert effects == [Fail(1, 503, "model 'a' was unloaded"), Stop("a")]
    assert s.reserved["a"] == 0


def test_unexpected_exit_marks_stopped_and_next_request_restarts() -> None:
    s = make()
    ready(s, "a", 1)
    assert s.stopped("a") == []
    assert s.status["a"] is Status.STOPPED
    assert s.request(2, "a") == [StartSwap("a", frozenset())]


def test_processless_model_is_always_granted_and_never_swapped() -> None:
    s = make(hosted=ModelLimits(10, has_process=False))
    ready(s, "a", 1)
    assert s.request(2, "hosted") == [Grant(2, "hosted")]
    assert "hosted" not in s.status


def test_reconfigure_retires_changed_models_once_idle_and_keeps_the_rest() -> None:
    s = make()
    ready(s, "fast", 1)
    ready(s, "a", 2)
    assert s.request(3, "a") == [Grant(3, "a")]
    models = {m: ModelLimits(10) for m in ("a", "b", "c", "fast")}
    assert s.reconfigure(models, alone, {"a"}) == []  # a is serving: it finishes first
    assert s.request(4, "a") == []  # new requests wait for the restart
    assert s.finished(3) == [Stop("a")]
    assert s.stopped("a") == [StartSwap("a", frozenset())]
    assert s.status["fast"] is Status.READY


def test_reconfigure_forgets_a_removed_model_after_it_stops() -> None:
    s = make()
    ready(s, "c", 1)
    models = {m: ModelLimits(10) for m in ("a", "b", "fast")}
    assert s.reconfigure(models, alone, {"c"}) == [Stop("c")]
    assert s.request(2, "c")[0].status == 404
    s.stopped("c")
    assert "c" not in s.status
