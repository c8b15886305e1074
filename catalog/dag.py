"""Dependency graphs of services: dispatch waves (并联审批), cycles, the critical path.

Generic over node names so the loader (whole catalog), the dispatch projector (one case)
and property tests (random graphs) share one implementation. A graph is a mapping
`node → the nodes it waits for`; every prerequisite must itself be a node.
"""
from __future__ import annotations

from typing import Hashable, Iterable, Mapping, Sequence, TypeVar

N = TypeVar("N", bound=Hashable)

__all__ = ["CycleError", "find_cycle", "waves", "topological_order", "critical_path"]


class CycleError(ValueError):
    """The graph has a cycle; `cycle` lists it closed, e.g. (a, b, a)."""

    def __init__(self, cycle: Sequence):
        self.cycle = tuple(cycle)
        super().__init__("dependency cycle: " + " → ".join(map(str, self.cycle)))


def _check_closed(deps: Mapping[N, Iterable[N]]) -> None:
    for node, prereqs in deps.items():
        for p in prereqs:
            if p not in deps:
                raise KeyError(f"{node!r} waits for {p!r}, which is not in the graph")


def find_cycle(deps: Mapping[N, Iterable[N]]) -> tuple[N, ...] | None:
    """One cycle as a closed path (first node repeated at the end), or None.

    Iterative DFS so that a long chain in generated test graphs cannot hit the recursion limit.
    """
    _check_closed(deps)
    state: dict[N, int] = {}  # 1 = on the current path, 2 = finished
    for root in sorted(deps, key=str):
        if root in state:
            continue
        path: list[N] = [root]
        stack = [iter(sorted(deps[root], key=str))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(nxt) == 1:
                return tuple(path[path.index(nxt):]) + (nxt,)
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(deps[nxt], key=str)))
    return None


def waves(deps: Mapping[N, Iterable[N]]) -> tuple[tuple[N, ...], ...]:
    """Nodes grouped by how long they must wait: wave 0 needs nothing, wave k needs wave < k.

    Every node goes out as early as its inputs allow, which is what parallel dispatch means;
    inside a wave the order is by name only, so the result is deterministic.
    """
    cycle = find_cycle(deps)
    if cycle:
        raise CycleError(cycle)
    level: dict[N, int] = {}
    for node in topological_order(deps):
        level[node] = 1 + max((level[p] for p in deps[node]), default=-1)
    grouped: dict[int, list[N]] = {}
    for node, lv in level.items():
        grouped.setdefault(lv, []).append(node)
    return tuple(tuple(sorted(grouped[lv], key=str)) for lv in sorted(grouped))


def topological_order(deps: Mapping[N, Iterable[N]]) -> tuple[N, ...]:
    """Every node after all it waits for (Kahn's algorithm, ties broken by name)."""
    _check_closed(deps)
    remaining = {n: set(ps) for n, ps in deps.items()}
    order: list[N] = []
    ready = sorted((n for n, ps in remaining.items() if not ps), key=str)
    dependants: dict[N, list[N]] = {n: [] for n in deps}
    for n, ps in deps.items():
        for p in ps:
            dependants[p].append(n)
    while ready:
        node = ready.pop(0)
        order.append(node)
        for d in dependants[node]:
            remaining[d].discard(node)
            if not remaining[d]:
                ready.append(d)
        ready.sort(key=str)
        remaining.pop(node)
    if remaining:
        raise CycleError(find_cycle(deps) or tuple(remaining))
    return tuple(order)


def critical_path(deps: Mapping[N, Iterable[N]], weight: Mapping[N, float]) -> tuple[float, tuple[N, ...]]:
    """The longest chain of waiting, by total weight: what bounds the promised time (承诺时限).

    Services in parallel overlap; only a chain of services each waiting for the previous
    one's output adds up. Returns (total weight, the chain from first to last).
    """
    best: dict[N, float] = {}
    via: dict[N, N | None] = {}
    for node in topological_order(deps):
        prev = max(sorted(deps[node], key=str), key=lambda p: best[p], default=None)
        best[node] = weight[node] + (best[prev] if prev is not None else 0)
        via[node] = prev
    if not best:
        return 0, ()
    end = max(sorted(best, key=str), key=lambda n: best[n])
    chain: list[N] = []
    node: N | None = end
    while node is not None:
        chain.append(node)
        node = via[node]
    return best[end], tuple(reversed(chain))
