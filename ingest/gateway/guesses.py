"""Wrong passwords per peer address: a peer that keeps guessing is shut out for a while.

SL 651's password is two bytes: 65,536 guesses, and a connection may try 31 before the junk
limit closes it. A peer past ``budget`` wrong passwords within ``window_s`` is refused at
connect until its oldest guess has left the window. Stations behind one carrier NAT share an
address, so a misconfigured neighbour can shut them out too: the budget is generous for a
station whose password was changed (it retries each frame a few times), tight for a guesser
(20 guesses per 10 minutes: months for the whole SL 651 space).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable


class PasswordGuesses:
    """Counts wrong passwords per peer within a sliding window; bounded in peers kept."""

    def __init__(
        self,
        budget: int = 20,
        window_s: float = 600.0,
        max_peers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = budget
        self._window_s = window_s
        self._max_peers = max_peers
        self._clock = clock
        self._peers: OrderedDict[str, deque[float]] = OrderedDict()

    def shut_out(self, peer: str) -> bool:
        """Whether ``peer`` has used its budget within the window."""
        times = self._peers.get(peer)
        if times is None:
            return False
        horizon = self._clock() - self._window_s
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._peers[peer]
            return False
        return len(times) >= self._budget

    def wrong(self, peer: str) -> bool:
        """Record a wrong password from ``peer``; whether it is now shut out."""
        times = self._peers.setdefault(peer, deque(maxlen=self._budget))
        times.append(self._clock())
        self._peers.move_to_end(peer)
        while len(self._peers) > self._max_peers:  # the least recently wrong go first
            self._peers.popitem(last=False)
        return self.shut_out(peer)
