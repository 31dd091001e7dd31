"""The scheduler's rules, one test each: pure state machine, no processes, no sleeps."""

from __future__ import annotations

from swapper.scheduler import (
    Effect,
    Fail,
    Grant,
    Load,
    ModelLimits,
    Reject,
    Scheduler,
    StartSwap,
    Status,
    Stop,
)
from swapper.solver import Solution


def alone(target: str, running: frozenset[str]) -> Solution:
    """Every model runs alone, except 'fast', which co-resides with anything."""
    if target == "fast":
        return Solution(frozenset(), "with-fast", 0)
    evict = frozenset(m for m in running if m != "fast" and m != target)
    return Solution(evict, "alone", len(evict))


def loaded(s: Scheduler, model: str, *error: object) -> list[Effect]:
    """Both phases of the swap for ``model``: evictions done, then the load's outcome."""
    assert s.evicted(model) == [Load(model)]
    return s.swap_done(model, *error)  # type: ignore[arg-type]


def make(limit: int = 10, **extra: ModelLimits) -> Scheduler:
    models = {m: ModelLimits(limit) for m in ("a", "b", "c", "fast")}
    models.update(extra)
    return Scheduler(models, alone)


def ready(s: Scheduler, model: str, req: int) -> None:
    """Bring ``model`` up through a request ``req`` that then finishes."""
    assert s.request(req, model) == [StartSwap(model, s.swaps.get(model, frozenset()) or _ev(s, model))]
    assert loaded(s, model) == [Grant(req, model)]
    s.finished(req)


def _ev(s: Scheduler, model: str) -> frozenset[str]:
    return alone(model, s.running() - {model}).evict


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
    assert loaded(s, "a") == [Grant(1, "a"), Grant(2, "a"), Grant(3, "a")]


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
    assert loaded(s, "b") == [Grant(2, "b")]
    assert s.status["a"] is Status.STOPPED


def test_queue_when_colliding_with_an_in_flight_swap() -> None:
    s = make()
    assert s.request(1, "a") == [StartSwap("a", frozenset())]
    assert s.request(2, "b") == []  # b would evict a, which is loading
    assert s.queued() == [(2, "b")]
    assert loaded(s, "a") == [Grant(1, "a")]  # b still waits: a is serving
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
    pending = loaded(s, "a")
    while pending:
        effect = pending.pop(0)
        if isinstance(effect, Grant):
            served.append(effect.model)
            pending += s.finished(effect.req)
        elif isinstance(effect, StartSwap):
            pending += loaded(s, effect.model)
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
    assert loaded(s, "a") == []
    assert s.status["a"] is Status.READY


def test_failed_load_fails_all_waiters_with_its_error() -> None:
    s = make()
    s.request(1, "a")
    s.request(2, "a")
    assert loaded(s, "a", "exited with code 1", 502) == [
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
    assert loaded(s, "a") == [Grant(2, "a")]


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
    assert s.request(2, "c") == [Reject(2, 404, "model 'c' not found")]
    s.stopped("c")
    assert "c" not in s.status


def test_swap_names_the_set_and_cost_that_chose_it() -> None:
    s = make()
    ready(s, "a", 1)
    (swap,) = s.request(2, "b")
    assert isinstance(swap, StartSwap)
    assert (swap.evict, swap.set_name, swap.cost) == (frozenset({"a"}), "alone", 1)


def test_evicted_models_are_stopped_before_the_load_starts() -> None:
    s = make()
    ready(s, "a", 1)
    s.request(2, "b")
    assert s.evicted("b") == [Load("b")]
    assert s.status["a"] is Status.STOPPED and s.status["b"] is Status.STARTING


# -- fairness -------------------------------------------------------------------------


def fair(limit: float = 10.0) -> Scheduler:
    models = {m: ModelLimits(100) for m in ("agent", "plan", "fast")}
    return Scheduler(models, alone, max_queue_wait=limit)


def test_steady_traffic_is_served_while_the_waiting_request_is_young() -> None:
    s = fair()
    ready(s, "agent", 1)
    assert s.request(2, "agent", now=0.0) == [Grant(2, "agent")]
    assert s.request(3, "plan", now=0.0) == []  # agent is serving: plan queues
    assert s.request(4, "agent", now=9.9) == [Grant(4, "agent")]  # collation, under the limit


def test_an_overdue_request_holds_the_model_it_must_evict_until_it_drains() -> None:
    s = fair()
    ready(s, "fast", 0)
    ready(s, "agent", 1)
    s.request(2, "agent", now=0.0)
    s.request(3, "plan", now=0.0)
    assert s.request(4, "agent", now=10.0) == []  # plan waited 10 s: new agent work queues
    assert s.held() == {"agent"}
    assert s.request(5, "fast", now=10.0) == [Grant(5, "fast")]  # fast co-resides: not held
    assert s.finished(2) == [StartSwap("plan", frozenset({"agent"}))]  # the drain
    assert loaded(s, "plan") == [Grant(3, "plan")]
    assert s.held() == frozenset()
    assert s.finished(3) == [StartSwap("agent", frozenset({"plan"}))]  # then agent's turn
    assert loaded(s, "agent") == [Grant(4, "agent")]


def test_a_queued_request_for_the_held_model_is_not_granted_by_collation() -> None:
    s = fair(limit=1.0)
    ready(s, "agent", 1)
    s.request(2, "agent", now=0.0)
    s.request(3, "plan", now=0.0)
    s.request(4, "agent", now=2.0)  # held: queued
    s.request(6, "agent", now=3.0)
    assert s.finished(2) == [StartSwap("plan", frozenset({"agent"}))]
    assert [req for req, _ in s.queued()] == [4, 6]


def test_zero_wait_limit_is_strict_fifo() -> None:
    s = fair(limit=0.0)
    ready(s, "agent", 1)
    s.request(2, "agent", now=0.0)
    s.request(3, "plan", now=0.0)
    assert s.request(4, "agent", now=0.0) == []


def test_cancelled_overdue_request_releases_the_hold() -> None:
    s = fair(limit=1.0)
    ready(s, "agent", 1)
    s.request(2, "agent", now=0.0)
    s.request(3, "plan", now=0.0)
    s.request(4, "agent", now=5.0)
    s.cancel(3)
    assert s.held() == frozenset()
    assert s.request(5, "agent", now=6.0) == [Grant(5, "agent")]


# -- unload cancels a swap in flight --------------------------------------------------


def test_unload_while_a_swap_evicts_for_the_model_never_leaves_it_ready() -> None:
    s = make()
    ready(s, "a", 1)
    assert s.request(2, "b") == [StartSwap("b", frozenset({"a"}))]
    assert s.unload("b") == [Fail(2, 503, "model 'b' was unloaded"), Stop("b")]
    assert s.evicted("b") == []  # no Load: the swap is cancelled
    assert s.status["b"] is Status.STOPPING
    assert s.stopped("b") == []
    assert s.status["b"] is Status.STOPPED and s.running() == frozenset()


def test_unload_while_the_model_loads_discards_the_load() -> None:
    s = make()
    s.request(1, "a")
    assert s.evicted("a") == [Load("a")]
    assert s.unload("a") == [Fail(1, 503, "model 'a' was unloaded"), Stop("a")]
    assert s.swap_done("a") == []  # it came up anyway: no grant, the Stop ends it
    assert s.status["a"] is Status.STOPPING
    s.stopped("a")
    assert s.status["a"] is Status.STOPPED


def test_a_request_after_an_unload_waits_for_the_cancelled_swap_then_starts_afresh() -> None:
    s = make()
    ready(s, "a", 1)
    s.request(2, "b")
    s.unload("b")
    assert s.request(3, "b") == []  # not joined to the cancelled swap
    assert s.evicted("b") == []
    assert s.stopped("b") == [StartSwap("b", frozenset())]
    assert loaded(s, "b") == [Grant(3, "b")]


def test_stops_say_why() -> None:
    s = make()
    ready(s, "a", 1)
    (stop,) = s.idle_timeout("a")
    assert isinstance(stop, Stop) and stop.reason == "ttl"


def test_shutdown_fails_everything_pending_and_leaves_nothing_ready() -> None:
    s = make()
    ready(s, "a", 1)
    s.request(2, "a")
    s.request(3, "b")  # queued: a is serving
    s.request(4, "fast")  # loading
    assert s.shutdown() == [Fail(3, 503, "the swapper is shutting down"),
                            Fail(4, 503, "the swapper is shutting down")]
    assert s.running() == frozenset() and s.queued() == []
    assert s.idle_timeout("a") == []


def test_fifo_priority_queue_order() -> None:
    """llama-swap's TestFIFO_PriorityQueueOrder: higher priority first, FIFO among equals."""
    models = {m: ModelLimits(10, priority=p) for m, p in
              {"z": 0, "A": 10, "B": 5, "C": 5, "D": 1}.items()}
    s = Scheduler(models, lambda target, running: Solution(running - {target}, "alone", 0))
    assert s.request(1, "z") == [StartSwap("z", frozenset())]
    for req, model in enumerate(["B", "D", "C", "A"], start=2):
        assert s.request(req, model) == []  # z is loading: everything else queues
    assert [m for _, m in s.queued()] == ["A", "B", "C", "D"]


def test_fifo_priority_decides_which_swap_starts_when_the_queue_drains() -> None:
    s = make(low=ModelLimits(10), high=ModelLimits(10, priority=3))
    ready(s, "a", 1)
    assert s.request(2, "a") == [Grant(2, "a")]  # a busy: swaps away from it must wait
    assert s.request(3, "low") == []
    assert s.request(4, "high") == []
    assert s.finished(2) == [StartSwap("high", frozenset({"a"}))]
