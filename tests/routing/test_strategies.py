"""Ordering deployments: least outstanding, round robin, and consistent-hash affinity with
bounded load."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from app.routing.strategies import HashRing, Strategy


@dataclass
class Node:
    name: str
    load: int = 0


def names(nodes: list[Node]) -> list[str]:
    return [node.name for node in nodes]


def test_least_outstanding_takes_the_least_loaded_and_rotates_ties() -> None:
    """The least loaded comes first; equal loads take turns."""
    nodes = [Node("a", 3), Node("b", 1), Node("c", 1)]
    strategy = Strategy("least_outstanding", names(nodes), 1.25)
    firsts = {strategy.order(nodes, None)[0].name for _ in range(4)}
    assert firsts == {"b", "c"}
    nodes[0].load = 0
    assert strategy.order(nodes, None)[0].name == "a"


def test_round_robin_starts_one_further_each_time() -> None:
    nodes = [Node("a"), Node("b"), Node("c")]
    strategy = Strategy("round_robin", names(nodes), 1.25)
    assert [strategy.order(nodes, None)[0].name for _ in range(6)] == list("abcabc")


def test_affinity_sends_a_key_to_the_same_deployment_and_spreads_keys() -> None:
    """The same key always lands on the same deployment; 3,000 keys spread over all four
    (no deployment gets more than twice its share)."""
    nodes = [Node(name) for name in "abcd"]
    strategy = Strategy("prefix_affinity", names(nodes), 1.25)
    assert len({strategy.order(nodes, b"session-42")[0].name for _ in range(10)}) == 1
    spread = Counter(strategy.order(nodes, f"k{i}".encode())[0].name for i in range(3000))
    assert set(spread) == set("abcd") and max(spread.values()) < 2 * 3000 / 4


def test_an_overloaded_favourite_spills_to_the_least_loaded() -> None:
    """Above 1.25x the mean load the key's deployment is passed over for the least loaded."""
    nodes = [Node(name) for name in "abc"]
    strategy = Strategy("prefix_affinity", names(nodes), 1.25)
    favourite = strategy.order(nodes, b"hot-prefix")[0]
    favourite.load = 1  # (1 + 1) / 3 * 1.25 = 0.83: over the bound
    order = strategy.order(nodes, b"hot-prefix")
    assert order[0] is not favourite and order[0].load == 0
    for node in nodes:
        node.load = 10
    favourite.load = 11  # 1.25 * 32 / 3 = 13.3: within the bound, affinity holds
    assert strategy.order(nodes, b"hot-prefix")[0] is favourite


def test_removing_a_deployment_moves_only_its_keys() -> None:
    """Consistent hashing: keys of the other deployments keep their place."""
    keys = [f"key-{i}".encode() for i in range(2000)]
    before = HashRing(list("abcd"))
    after = HashRing(list("abc"))
    moved = [k for k in keys if before.preference(k)[0] != after.preference(k)[0]]
    assert all(before.preference(k)[0] == "d" for k in moved)
