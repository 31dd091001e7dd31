"""Residency solver: which running models must stop before a model starts.

Pure functions, no I/O. :func:`compile_plan` turns a :class:`SwapperConfig`
into an immutable :class:`Plan`; :meth:`Plan.solve` answers "what must be
evicted to start ``target``?" with llama-swap's matrix semantics:

* a set is a DSL expression (``&`` co-exist, ``|`` alternatives, ``( )``,
  ``+ref`` inlines another set) and permits any subset of one of its
  combinations;
* combinations are projected onto ``{target} | running`` and a set-subset
  frontier is kept, so a large Cartesian product is never expanded;
* the cost of a combination is the sum of the evict costs (default 1) of the
  running models it does not keep; the strict minimum wins, so ties keep the
  first one found (sets in definition order, a ``+ref``-ed set before its
  referrer; inside a set, expression order);
* a model in no set evicts every running model and runs alone.

llama-swap groups compile to sets for the same solver (one set per group,
applicable only when the target is a member), and with neither matrix nor
groups every model runs alone. Models without a process are ignored: they are
never evicted and never cause an eviction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .config import ConfigError, Group, Matrix, MemoryBudgetError, ModelSpec, SwapperConfig

DEFAULT_EVICT_COST = 1
DEFAULT_GROUP = "(default)"
SOLVE_CACHE_SIZE = 4096

_VAR_KEY = re.compile(r"[a-zA-Z0-9.-]{1,32}")
_TOKEN = re.compile(r"(?P<op>[&|()])|\+(?P<ref>[\w.-]*)|(?P<name>[\w.-]+)|(?P<bad>\S)")


@dataclass(frozen=True)
class Solution:
    """What to stop before starting a model.

    ``set_name`` is the set whose combination was chosen (None when the target
    is in no set, or has no process); ``cost`` sums the evict costs of
    ``evict``.
    """

    evict: frozenset[str]
    set_name: str | None
    cost: int


# --------------------------------------------------------------------------- expression graph


@dataclass(frozen=True, eq=False)
class _Node:
    """A leaf (``model``) or an ``and``/``or`` of children; ``+ref`` shares nodes."""

    kind: str
    support: frozenset[str]
    model: str = ""
    children: tuple[_Node, ...] = ()


def _leaf(model: str) -> _Node:
    return _Node("leaf", frozenset((model,)), model=model)


def _join(kind: str, children: Sequence[_Node]) -> _Node:
    if len(children) == 1:
        return children[0]
    return _Node(kind, frozenset().union(*(c.support for c in children)), children=tuple(children))


@dataclass(frozen=True)
class _Set:
    """A compiled set. ``targets`` limits which targets may choose it (None: any)."""

    name: str
    root: _Node
    where: str
    targets: frozenset[str] | None = None

    def applies_to(self, target: str) -> bool:
        return target in self.root.support and (self.targets is None or target in self.targets)


# --------------------------------------------------------------------------- DSL parsing


@dataclass(frozen=True)
class _Token:
    kind: str  # "&", "|", "(", ")", "ref", "name" or "end"
    text: str
    pos: int


def _tokenize(dsl: str, where: str) -> list[_Token]:
    tokens = []
    for match in _TOKEN.finditer(dsl):
        pos = match.start()
        if match["bad"] is not None:
            problem = f"unexpected character {match['bad']!r}"
            raise ConfigError(f"syntax error: {problem} at position {pos}", where)
        if match["op"] is not None:
            tokens.append(_Token(match["op"], match["op"], pos))
        elif match["ref"] is not None:
            if not match["ref"]:
                problem = "expected a set name after '+'"
                raise ConfigError(f"syntax error: {problem} at position {pos}", where)
            tokens.append(_Token("ref", match["ref"], pos))
        else:
            tokens.append(_Token("name", match["name"], pos))
    if not tokens:
        raise ConfigError("empty expression", where)
    tokens.append(_Token("end", "", len(dsl)))
    return tokens


class _Parser:
    """Recursive descent: ``or := and ('|' and)*``, ``and := atom ('&' atom)*``."""

    def __init__(
        self,
        tokens: list[_Token],
        where: str,
        name: Callable[[str], str | None],
        ref: Callable[[str], _Node],
    ) -> None:
        self._tokens = tokens
        self._pos = 0
        self._where = where
        self._name = name
        self._ref = ref

    def parse(self) -> _Node:
        root = self._or()
        if self._peek().kind != "end":
            raise self._error("unexpected", self._peek())
        return root

    def _peek(self) -> _Token:
        return self._tokens[self._pos]

    def _next(self) -> _Token:
        token = self._tokens[self._pos]
        self._pos += token.kind != "end"
        return token

    def _error(self, problem: str, token: _Token) -> ConfigError:
        shown = repr(token.text) if token.text else "end of expression"
        return ConfigError(f"syntax error: {problem} {shown} at position {token.pos}", self._where)

    def _or(self) -> _Node:
        return _join("or", self._sequence(self._and, "|"))

    def _and(self) -> _Node:
        return _join("and", self._sequence(self._atom, "&"))

    def _sequence(self, item: Callable[[], _Node], operator: str) -> list[_Node]:
        items = [item()]
        while self._peek().kind == operator:
            self._next()
            items.append(item())
        return items

    def _atom(self) -> _Node:
        token = self._next()
        if token.kind == "name":
            model = self._name(token.text)
            if model is None:
                raise ConfigError(f"unknown name {token.text!r}", self._where)
            return _leaf(model)
        if token.kind == "ref":
            return self._ref(token.text)
        if token.kind == "(":
            inner = self._or()
            if self._peek().kind != ")":
                raise self._error("expected ')' before", self._peek())
            self._next()
            return inner
        raise self._error("expected a name, '(' or '+ref' but got", token)


def _topological(refs: Mapping[str, list[str]]) -> list[str]:
    """Set names, each after the sets it references, else in definition order."""
    order: list[str] = []
    path: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise ConfigError(f"circular +ref {cycle}", f"matrix.sets.{name}")
        path.append(name)
        for dependency in refs[name]:
            visit(dependency)
        path.pop()
        order.append(name)

    for name in refs:
        visit(name)
    return order


def _matrix_sets(matrix: Matrix, models: Mapping[str, ModelSpec]) -> list[_Set]:
    """Validate and compile ``matrix.sets`` in solver visiting order."""
    if not matrix.sets:
        raise ConfigError("must define at least one set", "matrix.sets")

    def resolve(name: str) -> str | None:
        return matrix.vars.get(name) or (name if name in models else None)

    tokens: dict[str, list[_Token]] = {}
    refs: dict[str, list[str]] = {}
    for name, dsl in matrix.sets.items():
        where = f"matrix.sets.{name}"
        if not isinstance(dsl, str):
            raise ConfigError(f"expected a set expression string, got {dsl!r}", where)
        tokens[name] = _tokenize(dsl, where)
        refs[name] = list(dict.fromkeys(t.text for t in tokens[name] if t.kind == "ref"))
        for ref in refs[name]:
            if ref not in matrix.sets:
                raise ConfigError(f"unknown set '+{ref}'", where)

    roots: dict[str, _Node] = {}
    for name in _topological(refs):
        where = f"matrix.sets.{name}"
        roots[name] = _Parser(tokens[name], where, resolve, roots.__getitem__).parse()
    return [_Set(name, root, f"matrix.sets.{name}") for name, root in roots.items()]


def _evict_costs(matrix: Matrix, models: Mapping[str, ModelSpec]) -> dict[str, int]:
    """Validate ``matrix.vars``/``matrix.evict_costs``; evict costs by model id."""
    for key, model in matrix.vars.items():
        if not _VAR_KEY.fullmatch(key):
            raise ConfigError("var names use 1-32 of a-z A-Z 0-9 . -", f"matrix.vars.{key}")
        if model not in models:
            raise ConfigError(f"unknown model {model!r}", f"matrix.vars.{key}")
    costs = {}
    for key, cost in matrix.evict_costs.items():
        where = f"matrix.evict_costs.{key}"
        if isinstance(cost, bool) or not isinstance(cost, int) or cost <= 0:
            raise ConfigError(f"must be a positive integer, got {cost!r}", where)
        model = matrix.vars.get(key) or key
        if model not in models:
            raise ConfigError(f"unknown name {key!r}", where)
        costs[model] = cost
    return costs


# --------------------------------------------------------------------------- groups


def _group_sets(groups: Sequence[Group], models: Mapping[str, ModelSpec]) -> list[_Set]:
    """llama-swap groups as sets, one per group, applicable to its own members.

    Loading a member keeps its group-mates unless ``swap``; it keeps members of
    other groups when the group is not ``exclusive`` or the other group is
    ``persistent``. Ungrouped models form a swap+exclusive default group.
    """
    owner: dict[str, str] = {}
    for group in groups:
        for member in group.members:
            where = f"groups.{group.name}.members"
            if member not in models:
                raise ConfigError(f"unknown model {member!r}", where)
            if member in owner:
                raise ConfigError(f"{member!r} is already in group {owner[member]!r}", where)
            owner[member] = group.name
    ungrouped = tuple(sorted(m for m in models if m not in owner))
    everyone = [g for g in (*groups, Group(DEFAULT_GROUP, ungrouped)) if g.members]

    def members(group: Group) -> _Node:
        return _join("or" if group.swap else "and", [_leaf(m) for m in group.members])

    sets = []
    for group in everyone:
        kept = [o for o in everyone if o is not group and (not group.exclusive or o.persistent)]
        root = _join("and", [members(group), *map(members, kept)])
        sets.append(_Set(group.name, root, f"groups.{group.name}", frozenset(group.members)))
    return sets


# --------------------------------------------------------------------------- projection


class _Projection:
    """Every combination of a node as a bitmask over a few relevant models.

    A combination's irrelevant models project to nothing; combinations whose
    projection is a subset of another's are dropped (they can keep no more).
    Results are memoised per node for the lifetime of the projection.
    """

    def __init__(self, relevant: Iterable[str]) -> None:
        self.bits = {model: 1 << i for i, model in enumerate(dict.fromkeys(relevant))}
        self._memo: dict[_Node, list[int]] = {}

    def mask(self, models: Iterable[str]) -> int:
        return sum(self.bits[m] for m in set(models))

    def models(self, mask: int) -> list[str]:
        return [m for m, bit in self.bits.items() if mask & bit]

    def states(self, node: _Node) -> list[int]:
        if node not in self._memo:
            self._memo[node] = self._evaluate(node)
        return self._memo[node]

    def _evaluate(self, node: _Node) -> list[int]:
        if node.kind == "leaf":
            return [self.bits.get(node.model, 0)]
        if node.kind == "or":
            return _frontier(s for child in node.children for s in self.states(child))
        states = [0]
        for child in node.children:
            states = _frontier(a | b for a in states for b in self.states(child))
        return states


def _frontier(masks: Iterable[int]) -> list[int]:
    """Masks in order, dropping any that is a subset of one kept earlier or later.

    A new mask that is a subset of a kept one is ignored; one that is a
    superset replaces the masks it covers and moves to the end (llama-swap's
    order, which decides ties).
    """
    kept: list[int] = []
    for mask in masks:
        if any(mask | other == other for other in kept):
            continue
        kept = [other for other in kept if other | mask != mask]
        kept.append(mask)
    return kept


# --------------------------------------------------------------------------- memory


_Weighed = tuple[float, frozenset[str]]  # (total memory, models)


def _heaviest(node: _Node, weights: Mapping[str, float], memo: dict[_Node, _Weighed]) -> _Weighed:
    """The heaviest combination of ``node`` (models of unknown size weigh nothing)."""
    if node not in memo:
        memo[node] = _evaluate_heaviest(node, weights, memo)
    return memo[node]


def _evaluate_heaviest(node: _Node, weights: Mapping[str, float], memo: dict) -> _Weighed:
    if node.kind == "leaf":
        if node.model in weights:
            return weights[node.model], frozenset((node.model,))
        return 0.0, frozenset()
    if node.kind == "or":
        return max((_heaviest(c, weights, memo) for c in node.children), key=lambda h: h[0])
    parts = [_heaviest_union(part, weights, memo) for part in _overlapping(node.children, weights)]
    return sum(p[0] for p in parts), frozenset().union(*(p[1] for p in parts))


def _overlapping(children: Sequence[_Node], weights: Mapping[str, float]) -> list[list[_Node]]:
    """Children grouped so that groups share no weighted model."""
    groups: list[tuple[set[str], list[_Node]]] = []
    for child in children:
        models, members = set(child.support & weights.keys()), [child]
        if not models:
            continue
        rest = []
        for other_models, other_members in groups:
            if other_models & models:
                models |= other_models
                members = other_members + members
            else:
                rest.append((other_models, other_members))
        groups = [*rest, (models, members)]
    return [members for _, members in groups]


def _heaviest_union(children: list[_Node], weights: Mapping[str, float], memo: dict) -> _Weighed:
    """Heaviest combination of an ``and`` of children that share models."""
    if len(children) == 1:
        return _heaviest(children[0], weights, memo)
    node = _join("and", children)
    projection = _Projection(sorted(node.support & weights.keys()))
    combos = [frozenset(projection.models(mask)) for mask in projection.states(node)]
    return max(((sum(weights[m] for m in c), c) for c in combos), key=lambda h: h[0])


def _megabytes(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _check_memory(config: SwapperConfig, sets: Sequence[_Set]) -> None:
    """Refuse a config where one model or an allowed combination exceeds the budget
    (:class:`MemoryBudgetError`, the heaviest such models first found)."""
    budget = config.memory_budget_mb
    if budget <= 0:
        return
    weights = {
        m: spec.memory_mb
        for m, spec in config.models.items()
        if spec.has_process and spec.memory_mb > 0
    }
    memo: dict[_Node, _Weighed] = {}
    candidates = [(f"models.{m}", (w, frozenset((m,)))) for m, w in weights.items()]
    candidates += [(s.where, _heaviest(s.root, weights, memo)) for s in sets]
    for where, (total, models) in candidates:
        if total > budget:
            verb = "needs" if len(models) == 1 else "need"
            raise MemoryBudgetError(
                models, total, budget,
                f"{' + '.join(sorted(models))} {verb} {_megabytes(total)} MB, "
                f"{_megabytes(total - budget)} MB over memory_budget_mb {_megabytes(budget)}",
                where,
            )


# --------------------------------------------------------------------------- plan


class Plan:
    """Compiled residency rules; immutable and safe to share between threads."""

    def __init__(
        self, sets: Sequence[_Set], evict_costs: Mapping[str, int], models: Mapping[str, ModelSpec]
    ) -> None:
        self._sets = tuple(sets)
        self._costs = dict(evict_costs)
        self._models = frozenset(models)
        self._processes = frozenset(m for m, spec in models.items() if spec.has_process)
        self._cached_solve = lru_cache(maxsize=SOLVE_CACHE_SIZE)(self._solve)

    def solve(self, target: str, running: frozenset[str]) -> Solution:
        """Models to evict so ``target`` can start next to the others in ``running``."""
        if target not in self._models:
            raise KeyError(target)
        return self._cached_solve(target, frozenset(running) & self._processes)

    def fits(self, running: frozenset[str]) -> bool:
        """Whether the process models in ``running`` may all be loaded together."""
        running = frozenset(running) & self._processes
        return len(running) <= 1 or self._first_containing(running, self._sets) is not None

    def _cost(self, models: Iterable[str]) -> int:
        return sum(self._costs.get(m, DEFAULT_EVICT_COST) for m in models)

    def _solve(self, target: str, running: frozenset[str]) -> Solution:
        if target not in self._processes:
            return Solution(frozenset(), None, 0)
        applicable = [s for s in self._sets if s.applies_to(target)]
        if target in running:
            found = self._first_containing(running, applicable)
            return Solution(frozenset(), found.name if found else None, 0)
        best: Solution | None = None
        for set_, evict in self._choices(target, running, applicable):
            cost = self._cost(evict)
            if best is None or cost < best.cost:
                best = Solution(evict, set_.name, cost)
        return best or Solution(running, None, self._cost(running))

    @staticmethod
    def _choices(
        target: str, running: frozenset[str], sets: Sequence[_Set]
    ) -> Iterator[tuple[_Set, frozenset[str]]]:
        """(set, models it evicts) for each projected combination that holds ``target``."""
        projection = _Projection([target, *sorted(running)])
        target_bit = projection.bits[target]
        for set_ in sets:
            for mask in projection.states(set_.root):
                if mask & target_bit:
                    yield set_, frozenset(m for m in running if not mask & projection.bits[m])

    @staticmethod
    def _first_containing(models: frozenset[str], sets: Sequence[_Set]) -> _Set | None:
        projection = _Projection(sorted(models))
        everything = projection.mask(models)
        for set_ in sets:
            if models <= set_.root.support and any(
                mask & everything == everything for mask in projection.states(set_.root)
            ):
                return set_
        return None


def compile_plan(config: SwapperConfig) -> Plan:
    """Validate the residency rules of ``config`` and compile them into a :class:`Plan`."""
    if config.matrix is not None and config.groups:
        raise ConfigError("config cannot use both 'groups' and 'matrix'")
    if config.matrix is not None:
        costs = _evict_costs(config.matrix, config.models)
        sets = _matrix_sets(config.matrix, config.models)
    elif config.groups:
        costs, sets = {}, _group_sets(config.groups, config.models)
    else:
        costs, sets = {}, []
    _check_memory(config, sets)
    return Plan(sets, costs, config.models)
