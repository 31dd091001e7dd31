"""Residency solver: llama-swap's matrix/group cases plus property tests."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swapper.config import ConfigError, Group, Matrix, ModelSpec, SwapperConfig
from swapper.solver import Plan, Solution, compile_plan

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def _models(names: Iterable[str], processless: Iterable[str] = (), memory=None) -> dict:
    memory = memory or {}
    specs = {n: ModelSpec(n, cmd=("srv", n), memory_mb=memory.get(n, 0)) for n in names}
    specs.update({n: ModelSpec(n) for n in processless})
    return specs


def matrix_plan(
    sets: Mapping[str, str],
    *,
    models: Iterable[str] = "abc",
    costs: Mapping[str, int] | None = None,
    vars: Mapping[str, str] | None = None,
    processless: Iterable[str] = (),
    memory: Mapping[str, float] | None = None,
    budget: float = 0,
) -> Plan:
    matrix = Matrix(vars=vars or {}, evict_costs=costs or {}, sets=sets)
    config = SwapperConfig(
        models=_models(models, processless, memory), matrix=matrix, memory_budget_mb=budget
    )
    return compile_plan(config)


def group_plan(groups: Iterable[Group], models: Iterable[str] = "abcd") -> Plan:
    return compile_plan(SwapperConfig(models=_models(models), groups=tuple(groups)))


def running(*names: str) -> frozenset[str]:
    return frozenset(names)


# --------------------------------------------------------------------------- llama-swap cases


def test_swap_evicts_conflicting():
    plan = matrix_plan({"s_a": "a", "s_b": "b"})
    assert plan.solve("b", running("a")) == Solution(running("a"), "s_b", 1)


def test_coexist_in_set():
    plan = matrix_plan({"s_ab": "a & b"})
    assert plan.solve("b", running("a")) == Solution(running(), "s_ab", 0)


def test_target_already_running_evicts_nothing():
    plan = matrix_plan({"s_a": "a", "s_b": "b"})
    assert plan.solve("a", running("a", "b")).evict == frozenset()


def test_tie_break_definition_order():
    plan = matrix_plan({"first": "a & b", "second": "a & c"})
    assert plan.solve("a", running()).set_name == "first"


def test_tie_break_visits_referenced_set_first():
    plan = matrix_plan({"outer": "+inner | (a & c)", "inner": "a & b"})
    assert plan.solve("a", running()).set_name == "inner"


@pytest.mark.parametrize(
    ("dsl", "evicted"), [("(a & b) | (a & c)", "c"), ("(a & c) | (a & b)", "b")]
)
def test_tie_break_expression_order_within_set(dsl, evicted):
    plan = matrix_plan({"s": dsl})
    assert plan.solve("a", running("b", "c")) == Solution(running(evicted), "s", 1)


def test_evict_costs_preferred():
    plan = matrix_plan({"a_with_c": "a & c", "a_with_b": "a & b"}, costs={"b": 10, "c": 1})
    assert plan.solve("a", running("b", "c")) == Solution(running("c"), "a_with_b", 1)


def test_evict_costs_accept_vars():
    plan = matrix_plan(
        {"a_with_c": "a & c", "a_with_b": "a & B"}, vars={"B": "b"}, costs={"B": 10}
    )
    assert plan.solve("a", running("b", "c")).evict == running("c")


def test_var_wins_over_model_id():
    plan = matrix_plan({"s": "a & c"}, vars={"a": "b"})
    assert plan.solve("b", running("c")).evict == frozenset()
    assert plan.solve("a", running("c")) == Solution(running("c"), None, 1)


def test_model_in_no_set_runs_alone():
    plan = matrix_plan({"s": "a & b"})
    assert plan.solve("c", running("a", "b")) == Solution(running("a", "b"), None, 2)


def test_without_matrix_or_groups_every_model_runs_alone():
    plan = compile_plan(SwapperConfig(models=_models("abc")))
    assert plan.solve("b", running("a")) == Solution(running("a"), None, 1)
    assert not plan.fits(running("a", "b"))


def test_subset_semantics_keep_the_larger_projection():
    plan = matrix_plan({"s": "t & (a | (a & b))"}, models="tab")
    assert plan.solve("t", running("a", "b")).evict == frozenset()


def test_overlapping_references():
    plan = matrix_plan({"base": "a & b", "extended": "t & +base & b"}, models="tab")
    assert plan.solve("t", running("a", "b")) == Solution(running(), "extended", 0)


def test_large_product_is_never_expanded():
    dims, choices = 12, 10  # 10**12 combinations
    models = [f"m{d}-{c}" for d in range(dims) for c in range(choices)]
    dsl = " & ".join(
        ["t", *("(" + " | ".join(f"m{d}-{c}" for c in range(choices)) + ")" for d in range(dims))]
    )
    plan = matrix_plan({"large": dsl}, models=["t", "outside", *models])
    keep = {f"m{d}-9" for d in range(dims)}
    assert plan.solve("t", frozenset({*keep, "outside"})) == Solution(
        running("outside"), "large", 1
    )
    assert plan.fits(frozenset({"t", *keep}))


def test_unknown_target_is_a_key_error():
    with pytest.raises(KeyError):
        matrix_plan({"s": "a"}).solve("nope", running())


# --------------------------------------------------------------------------- processless models


def test_processless_models_are_never_evicted():
    plan = matrix_plan({"s_a": "a", "s_b": "b"}, processless=["api"])
    assert plan.solve("b", running("a", "api")) == Solution(running("a"), "s_b", 1)
    assert plan.solve("c", running("a", "api")).evict == running("a")


def test_requesting_a_processless_model_evicts_nothing():
    plan = matrix_plan({"s_a": "a", "s_b": "b"}, processless=["api"])
    assert plan.solve("api", running("a", "b")) == Solution(running(), None, 0)


def test_processless_models_fit_with_anything():
    plan = matrix_plan({"s": "a & api"}, processless=["api", "web"])
    assert plan.fits(running("b", "api", "web"))
    assert plan.solve("a", running("api")) == Solution(running(), "s", 0)


# --------------------------------------------------------------------------- memory budget

PLANNER_MEMORY = {"code-fast": 8192, "plan": 30720, "plan-uncensored": 22528, "huge": 70000}
PLANNER_MODELS = ["code-fast", "plan", "plan-uncensored"]


def test_memory_budget_accepts_fitting_sets():
    sets = {"plan_with_fast": "code-fast & (plan | plan-uncensored)"}
    plan = matrix_plan(sets, models=PLANNER_MODELS, memory=PLANNER_MEMORY, budget=57344)
    assert plan.fits(running("code-fast", "plan"))


def test_memory_budget_refusal_names_the_overage():
    sets = {
        "plan_with_fast": "code-fast & (plan | plan-uncensored)",
        "all_with_fast": "code-fast & plan & plan-uncensored",
    }
    with pytest.raises(ConfigError) as error:
        matrix_plan(sets, models=PLANNER_MODELS, memory=PLANNER_MEMORY, budget=57344)
    assert str(error.value) == (
        "matrix.sets.all_with_fast: code-fast + plan + plan-uncensored need 61440 MB, "
        "4096 MB over memory_budget_mb 57344"
    )


def test_memory_budget_refuses_a_single_model_too_big():
    with pytest.raises(ConfigError) as error:
        matrix_plan({"s": "a"}, models=["a", "huge"], memory=PLANNER_MEMORY, budget=57344)
    assert str(error.value) == (
        "models.huge: huge needs 70000 MB, 12656 MB over memory_budget_mb 57344"
    )


@pytest.mark.parametrize(("budget", "fits"), [(50000, True), (49999, False)])
def test_memory_budget_counts_a_shared_model_once(budget, fits):
    memory = {"a": 40000, "b": 10000}
    sets = {"s": "a & (a | b) & +t", "t": "a | b"}
    if fits:
        matrix_plan(sets, models="ab", memory=memory, budget=budget)
    else:
        with pytest.raises(ConfigError, match="a \\+ b need 50000 MB, 1 MB over"):
            matrix_plan(sets, models="ab", memory=memory, budget=budget)


def test_memory_budget_ignores_unknown_sizes_and_processless_models():
    plan = matrix_plan(
        {"s": "a & b & api"}, models="ab", processless=["api"], memory={"a": 900}, budget=1000
    )
    assert plan.fits(running("a", "b", "api"))


def test_memory_budget_checks_groups():
    config = SwapperConfig(
        models=_models("ab", memory={"a": 600, "b": 600}),
        groups=(Group("g", ("a", "b"), swap=False),),
        memory_budget_mb=1000,
    )
    with pytest.raises(ConfigError, match=r"^groups\.g: a \+ b need 1200 MB, 200 MB over"):
        compile_plan(config)


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"s": "a &"}, "matrix.sets.s: syntax error: expected a name, '(' or '+ref'"),
        ({"s": "(a"}, "matrix.sets.s: syntax error: expected ')'"),
        ({"s": "a)"}, "matrix.sets.s: syntax error: unexpected ')'"),
        ({"s": "()"}, "matrix.sets.s: syntax error: expected a name"),
        ({"s": "a @ b"}, "matrix.sets.s: syntax error: unexpected character '@'"),
        ({"s": "+ a"}, "matrix.sets.s: syntax error: expected a set name after '+'"),
        ({"s": "  "}, "matrix.sets.s: empty expression"),
        ({"plan_with_fast": "a & q"}, "matrix.sets.plan_with_fast: unknown name 'q'"),
        ({"s": "a | +nope"}, "matrix.sets.s: unknown set '+nope'"),
        ({"s": "+t", "t": "a & +s"}, "matrix.sets.s: circular +ref s -> t -> s"),
        ({}, "matrix.sets: must define at least one set"),
    ],
)
def test_dsl_errors_name_the_set(sets, message):
    with pytest.raises(ConfigError) as error:
        matrix_plan(sets)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("vars", "costs", "message"),
    [
        ({"a b": "a"}, {}, "matrix.vars.a b: var names"),
        ({"x": "nope"}, {}, "matrix.vars.x: unknown model 'nope'"),
        ({}, {"a": 0}, "matrix.evict_costs.a: must be a positive integer"),
        ({}, {"zz": 2}, "matrix.evict_costs.zz: unknown name 'zz'"),
    ],
)
def test_vars_and_evict_cost_errors(vars, costs, message):
    with pytest.raises(ConfigError, match="^" + message):
        matrix_plan({"s": "a"}, vars=vars, costs=costs)


def test_matrix_and_groups_together_are_refused():
    config = SwapperConfig(
        models=_models("ab"), matrix=Matrix(sets={"s": "a"}), groups=(Group("g", ("a",)),)
    )
    with pytest.raises(ConfigError, match="cannot use both"):
        compile_plan(config)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ((Group("g1", ("a",)), Group("g2", ("a",))), "groups.g2.members: 'a' is already in"),
        ((Group("g", ("a", "zz")),), "groups.g.members: unknown model 'zz'"),
    ],
)
def test_group_membership_errors(groups, message):
    with pytest.raises(ConfigError, match="^" + message):
        group_plan(groups)


# --------------------------------------------------------------------------- groups


def test_group_swap_stops_previous():
    plan = group_plan([Group("g", ("a", "b"))])
    assert plan.solve("b", running("a")) == Solution(running("a"), "g", 1)


def test_non_swap_group_keeps_siblings():
    plan = group_plan([Group("g", ("a", "b"), swap=False, exclusive=False)])
    assert plan.solve("b", running("a")).evict == frozenset()


def test_exclusive_group_stops_other_groups():
    plan = group_plan([Group("g1", ("a",)), Group("g2", ("b",))])
    assert plan.solve("b", running("a")).evict == running("a")


def test_non_exclusive_groups_run_in_parallel():
    plan = group_plan([Group("g1", ("a",), exclusive=False), Group("g2", ("b",), exclusive=False)])
    assert plan.solve("b", running("a")).evict == frozenset()
    assert plan.solve("a", running("b")).evict == frozenset()


def test_persistent_group_is_not_evicted():
    groups = [Group("persist", ("a",), exclusive=False, persistent=True), Group("other", ("b",))]
    assert group_plan(groups).solve("b", running("a")).evict == frozenset()


def test_non_exclusive_does_not_unload_exclusive():
    plan = group_plan([Group("excl", ("a",)), Group("shared", ("b",), exclusive=False)])
    assert plan.solve("b", running("a")).evict == frozenset()
    assert plan.solve("a", running("b")).evict == running("b")


def test_ungrouped_models_form_an_exclusive_swap_group():
    plan = group_plan([Group("keep", ("a",), exclusive=False, persistent=True)])
    assert plan.solve("c", running("a", "b")) == Solution(running("b"), "(default)", 1)


# --------------------------------------------------------------------------- property tests

POOL = ("m0", "m1", "m2", "m3", "m4")
PROCESSLESS = "api"


@functools.cache  # one strategy per refs: built (and validated) once, not on every draw
def _expressions(refs: int) -> st.SearchStrategy:
    """Expression trees: model names, ('ref', i) for i < refs, ('&' | '|', children)."""
    leaves = st.sampled_from((*POOL, PROCESSLESS))
    if refs:
        leaves = leaves | st.tuples(st.just("ref"), st.integers(0, refs - 1))
    return st.recursive(
        leaves,
        lambda inner: st.tuples(st.sampled_from("&|"), st.lists(inner, min_size=2, max_size=3)),
        max_leaves=6,
    )


@st.composite
def matrices(draw) -> tuple[dict[str, object], dict[str, int]]:
    """Set trees keyed by name. Set i may reference sets after it (so +ref order matters)."""
    count = draw(st.integers(1, 4))
    trees: dict[int, object] = {}
    for index in reversed(range(count)):
        tree = draw(_expressions(count - 1 - index))
        trees[index] = _shift_refs(tree, index + 1)
    costs = draw(st.dictionaries(st.sampled_from(POOL), st.integers(1, 5)))
    return {f"s{i}": trees[i] for i in range(count)}, costs


def _shift_refs(tree, offset: int):
    if isinstance(tree, str):
        return tree
    if tree[0] == "ref":
        return ("ref", tree[1] + offset)
    return (tree[0], [_shift_refs(child, offset) for child in tree[1]])


def _dsl(tree) -> str:
    if isinstance(tree, str):
        return tree
    if tree[0] == "ref":
        return f"+s{tree[1]}"
    return "(" + f" {tree[0]} ".join(_dsl(child) for child in tree[1]) + ")"


def _combinations(tree, sets) -> set[frozenset[str]]:
    """Oracle: every full combination of a tree, by brute-force expansion.

    Duplicates are merged level by level: with six names there are at most 64
    distinct combinations, whereas the raw product of a ``+ref`` chain explodes.
    """
    if isinstance(tree, str):
        return {frozenset((tree,))}
    if tree[0] == "ref":
        return _combinations(sets[f"s{tree[1]}"], sets)
    parts = [_combinations(child, sets) for child in tree[1]]
    if tree[0] == "|":
        return set().union(*parts)
    combos = {frozenset()}
    for part in parts:
        combos = {done | more for done in combos for more in part}
    return combos


def _compile(sets, costs) -> tuple[Plan, dict[str, list[frozenset[str]]]]:
    plan = matrix_plan(
        {name: _dsl(tree) for name, tree in sets.items()},
        models=POOL,
        costs=costs,
        processless=[PROCESSLESS],
    )
    combos = {
        name: [c - {PROCESSLESS} for c in _combinations(tree, sets)] for name, tree in sets.items()
    }
    return plan, combos


def _allowed(models: frozenset[str], combos) -> bool:
    models = models - {PROCESSLESS}
    return len(models) <= 1 or any(models <= c for cs in combos.values() for c in cs)


operations = st.lists(
    st.tuples(st.sampled_from(["request", "unload"]), st.sampled_from((*POOL, PROCESSLESS))),
    max_size=25,
)


@PROPERTY_SETTINGS
@given(matrices(), operations)
def test_running_set_always_fits(matrix, ops):
    """Any sequence of requests (apply the evictions, add the target) and unloads
    leaves a running set that one allowed combination holds."""
    plan, combos = _compile(*matrix)
    loaded: frozenset[str] = frozenset()
    for op, model in ops:
        if op == "request":
            solution = plan.solve(model, loaded)
            assert solution.evict <= loaded - {model, PROCESSLESS}
            loaded = (loaded - solution.evict) | {model}
        else:
            loaded = loaded - {model}
        assert plan.fits(loaded) and _allowed(loaded, combos)


@PROPERTY_SETTINGS
@given(matrices(), st.sets(st.sampled_from((*POOL, PROCESSLESS))))
def test_fits_matches_brute_force(matrix, models):
    plan, combos = _compile(*matrix)
    assert plan.fits(frozenset(models)) == _allowed(frozenset(models), combos)


@PROPERTY_SETTINGS
@given(matrices(), st.sampled_from(POOL), st.sets(st.sampled_from((*POOL, PROCESSLESS))))
def test_swap_is_minimal_and_never_needless(matrix, target, loaded):
    """For a target t not running, running set R, and E = solve(t, R).evict, K = R - E:

    1. minimal: cost(E) is the least cost of R - C over every allowed combination
       C holding t (brute force), and E = R - C for one such C in the chosen set;
    2. never needless: no evicted model m co-resides with the target and with
       everything kept, i.e. no allowed combination holds {t} | K | {m}.
    """
    sets, costs = matrix
    plan, combos = _compile(sets, costs)
    loaded = frozenset(loaded) - {target}
    processes = loaded - {PROCESSLESS}
    solution = plan.solve(target, loaded)

    def cost(models):
        return sum(costs.get(m, 1) for m in models)

    holding = {name: [c for c in cs if target in c] for name, cs in combos.items()}
    if not any(holding.values()):
        assert solution == Solution(processes, None, cost(processes))
        return
    assert solution.cost == cost(solution.evict)
    assert solution.cost == min(cost(processes - c) for cs in holding.values() for c in cs)
    assert any(solution.evict == processes - c for c in holding[solution.set_name])
    kept = processes - solution.evict
    for model in solution.evict:
        assert not any({target, model} | kept <= c for cs in holding.values() for c in cs)


@PROPERTY_SETTINGS
@given(matrices(), st.dictionaries(st.sampled_from(POOL), st.integers(0, 9)), st.integers(1, 30))
def test_memory_refusal_matches_brute_force(matrix, memory, budget):
    """A config is refused iff one model, or one allowed combination, exceeds the budget."""
    sets, _ = matrix
    heaviest = max(
        sum(memory.get(m, 0) for m in combo - {PROCESSLESS})
        for tree in sets.values()
        for combo in [*_combinations(tree, sets), *({m} for m in POOL)]
    )
    dsl = {name: _dsl(tree) for name, tree in sets.items()}
    if heaviest <= budget:
        matrix_plan(dsl, models=POOL, processless=[PROCESSLESS], memory=memory, budget=budget)
    else:
        with pytest.raises(ConfigError, match=f" over memory_budget_mb {budget}$"):
            matrix_plan(dsl, models=POOL, processless=[PROCESSLESS], memory=memory, budget=budget)


GROUP_MODELS = ("g0", "g1", "g2", "g3", "g4", "g5")


@st.composite
def group_configs(draw) -> tuple[Group, ...]:
    """Random groups over a subset of GROUP_MODELS (the rest fall in the default group)."""
    size = len(GROUP_MODELS)
    owners = draw(st.lists(st.integers(-1, 2), min_size=size, max_size=size))
    groups = []
    for index in range(3):
        members = tuple(m for m, owner in zip(GROUP_MODELS, owners, strict=True) if owner == index)
        flags = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
        groups.append(Group(f"grp{index}", members, *flags))
    return tuple(groups)


def _group_rule(groups: tuple[Group, ...], target: str, loaded: frozenset[str]) -> frozenset[str]:
    """Oracle: llama-swap's group router eviction rule."""
    grouped = {m for g in groups for m in g.members}
    default = Group("(default)", tuple(m for m in GROUP_MODELS if m not in grouped))
    owner = {m: g for g in (*groups, default) for m in g.members}
    mine = owner[target]
    return frozenset(
        m for m in loaded - {target}
        if (owner[m] is mine and mine.swap)
        or (owner[m] is not mine and mine.exclusive and not owner[m].persistent)
    )


@PROPERTY_SETTINGS
@given(group_configs(), st.lists(st.sampled_from(GROUP_MODELS), max_size=20))
def test_groups_follow_llama_swap_rule(groups, requests):
    """From an empty start, every request evicts exactly what llama-swap's group
    router would, and the running set always fits."""
    plan = group_plan(groups, GROUP_MODELS)
    loaded: frozenset[str] = frozenset()
    for target in requests:
        evict = plan.solve(target, loaded).evict
        assert evict == (frozenset() if target in loaded else _group_rule(groups, target, loaded))
        loaded = (loaded - evict) | {target}
        assert plan.fits(loaded)
