"""Who probes what: rendezvous (highest random weight) hashing of targets over owners, and the live set of
detector instances as their heartbeats show it. Pure: no clock, no I/O (times are passed in).

With ``detector.vantage_points = k`` each EO endpoint is probed by the ``k`` live instances whose weight for
its target id is highest (all of them when fewer are live). Every instance computes the same answer from the
same live set, so no coordination is needed beyond seeing each other's heartbeats; when an instance leaves,
only the targets it owned move (each to the next instance in its own ranking), and when one joins, only the
targets it now ranks in the top ``k`` for move to it. The same function spreads targets over the probe
workers of one instance (``detector.workers``, one owner each).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Membership", "owners", "owns"]


def _weight(member: str, key: str) -> bytes:
    # 8 bytes of BLAKE2b: uniform, stable across processes and Python versions (unlike hash()).
    return hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()


def owners(key: str, members: Iterable[str], k: int) -> tuple[str, ...]:
    """The ``k`` members that own ``key`` (every member when there are fewer), highest weight first."""
    ranked = sorted(set(members), key=lambda m: (_weight(m, key), m), reverse=True)
    return tuple(ranked[:k])


def owns(member: str, key: str, members: Iterable[str], k: int) -> bool:
    """Whether ``member`` is one of the ``k`` owners of ``key`` among ``members`` (itself counted)."""
    others = set(members)
    others.add(member)
    if k >= len(others):
        return True
    mine = (_weight(member, key), member)
    # Owned when fewer than k others rank above it: one pass, no sort.
    above = sum(1 for m in others if m != member and (_weight(m, key), m) > mine)
    return above < k


@dataclass
class Membership:
    """The detector instances seen recently, ``self_id`` always among them.

    An instance is live while its last heartbeat is at most ``timeout_s`` old; ``seen`` takes the time a
    heartbeat was sent (seconds since the epoch), ``live`` the time now.
    """

    self_id: str
    timeout_s: float
    last_seen: dict[str, float] = field(default_factory=dict)

    def seen(self, instance: str, at: float) -> None:
        if at > self.last_seen.get(instance, float("-inf")):
            self.last_seen[instance] = at

    def live(self, now: float) -> frozenset[str]:
        """The live instances at ``now`` (forgetting those gone for good keeps the map small)."""
        horizon = now - self.timeout_s
        for instance in [i for i, at in self.last_seen.items() if at < horizon - self.timeout_s]:
            del self.last_seen[instance]
        return frozenset({self.self_id} | {i for i, at in self.last_seen.items() if at >= horizon})
