"""Peer selection. Each balancer picks among peers that are up and not yet tried.

- :class:`RoundRobin` is nginx's smooth weighted round robin: every pick adds each peer's
  weight to its ``current_weight``, takes the largest, and subtracts the total from it, which
  spreads a 5:3 split as a,b,a,a,b,a,b,a rather than a,a,a,a,a,b,b,b.
- :class:`LeastConn` picks the fewest in-flight requests per unit of weight.
- :class:`ConsistentHash` maps a key onto a ring of 160 points per unit of weight, so a peer
  going away moves only its own keys.
- :class:`RandomTwo` draws two peers and takes the less busy one.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

from ferryman.upstream.peer import Peer


class Balancer:
    def __init__(self, peers: Sequence[Peer]) -> None:
        self.peers = list(peers)

    def candidates(self, now: float, tried: Sequence[Peer]) -> list[Peer]:
        return [p for p in self.peers if p.available(now) and p not in tried]

    def pick(self, now: float, tried: Sequence[Peer], key: bytes = b"") -> Peer | None:
        raise NotImplementedError


class RoundRobin(Balancer):
    def pick(self, now: float, tried: Sequence[Peer], key: bytes = b"") -> Peer | None:
        best: Peer | None = None
        total = 0
        for p in self.peers:
            if p.down_until > now or p in tried:
                continue
            p.current_weight += p.weight
            total += p.weight
            if best is None or p.current_weight > best.current_weight:
                best = p
        if best is not None:
            best.current_weight -= total
        return best


class LeastConn(Balancer):
    def __init__(self, peers: Sequence[Peer]) -> None:
        super().__init__(peers)
        self._rr = RoundRobin(peers)

    def pick(self, now: float, tried: Sequence[Peer], key: bytes = b"") -> Peer | None:
        cands = self.candidates(now, tried)
        if not cands:
            return None
        least = min(p.active / p.weight for p in cands)
        ties = [p for p in cands if p.active / p.weight == least]
        if len(ties) == 1:
            return ties[0]
        # Among equals, weighted round robin keeps an idle group's split honest.
        return self._rr.pick(now, [p for p in self.peers if p not in ties])


class ConsistentHash(Balancer):
    POINTS = 160

    def __init__(self, peers: Sequence[Peer]) -> None:
        super().__init__(peers)
        ring: list[tuple[int, int]] = []
        for i, p in enumerate(self.peers):
            for n in range(self.POINTS * p.weight):
                ring.append((_hash(f"{p.address}-{n}".encode()), i))
        ring.sort()
        self._points = [h for h, _ in ring]
        self._owners = [i for _, i in ring]

    def pick(self, now: float, tried: Sequence[Peer], key: bytes = b"") -> Peer | None:
        if not self._points:
            return None
        start = bisect.bisect(self._points, _hash(key)) % len(self._points)
        seen: set[int] = set()
        n = len(self._points)
        for step in range(n):
            i = self._owners[(start + step) % n]
            if i in seen:
                continue
            seen.add(i)
            p = self.peers[i]
            if p.available(now) and p not in tried:
                return p
            if len(seen) == len(self.peers):
                break
        return None


class RandomTwo(Balancer):
    def pick(self, now: float, tried: Sequence[Peer], key: bytes = b"") -> Peer | None:
        cands = self.candidates(now, tried)
        if len(cands) <= 1:
            return cands[0] if cands else None
        a, b = random.sample(cands, 2)
        return a if a.active / a.weight <= b.active / b.weight else b


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "big")


BALANCERS: dict[str, type[Balancer]] = {
    "round_robin": RoundRobin,
    "least_conn": LeastConn,
    "hash": ConsistentHash,
    "random_two": RandomTwo,
}
