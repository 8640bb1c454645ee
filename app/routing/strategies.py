"""How a model's deployments are ordered for one request.

- ``least_outstanding`` (default): fewest requests in flight first; ties rotate.
- ``round_robin``: each request starts one further along.
- ``prefix_affinity``: consistent hashing of the prompt's first tokens, so requests that
  share a prefix land where its KV cache is warm — with bounded load: a deployment above
  ``max_load_factor`` times the mean load is passed over for the least loaded.

A session key (``X-Session-ID`` or ``user``) gives any strategy the same affinity, on the
session instead of the prefix. Only the order is decided here; availability is the
router's.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Sequence
from typing import Protocol, TypeVar

VIRTUAL_NODES = 64  # points per deployment on the hash ring: even spread, cheap to build


class Loaded(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def load(self) -> int: ...


L = TypeVar("L", bound=Loaded)


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """Deployment names on a consistent-hash ring: adding or removing one moves only its
    share of keys."""

    def __init__(self, names: Sequence[str]) -> None:
        points = sorted(
            (_hash(f"{name}#{i}".encode()), name) for name in names for i in range(VIRTUAL_NODES)
        )
        self._keys = [point for point, _ in points]
        self._names = [name for _, name in points]

    def preference(self, key: bytes) -> list[str]:
        """Every name, in ring order from ``key``'s point."""
        if not self._keys:
            return []
        start = bisect.bisect(self._keys, _hash(key)) % len(self._keys)
        seen: dict[str, None] = {}
        for name in itertools.chain(self._names[start:], self._names[:start]):
            seen.setdefault(name, None)
        return list(seen)


class Strategy:
    """Orders deployments; one instance per model (it keeps the rotation counter)."""

    def __init__(self, kind: str, names: Sequence[str], max_load_factor: float) -> None:
        self.kind, self.max_load_factor = kind, max_load_factor
        self.ring = HashRing(names)
        self._turn = itertools.count()

    def order(self, deployments: Sequence[L], key: bytes | None) -> list[L]:
        if key is not None:
            return self._affine(deployments, key)
        turn = next(self._turn)
        rotated = [*deployments[turn % len(deployments) :], *deployments[: turn % len(deployments)]]
        if self.kind == "round_robin":
            return rotated
        return sorted(rotated, key=lambda d: d.load)  # stable: ties keep the rotation

    def _affine(self, deployments: Sequence[L], key: bytes) -> list[L]:
        by_name = {d.name: d for d in deployments}
        ring = [by_name[name] for name in self.ring.preference(key) if name in by_name]
        ring += [d for d in deployments if d not in ring]
        # The +1 counts this request, so an idle pool never reads as overloaded.
        bound = self.max_load_factor * (sum(d.load for d in deployments) + 1) / len(deployments)
        if ring[0].load > bound:
            return sorted(ring, key=lambda d: d.load)  # spill: the least loaded first
        return ring
