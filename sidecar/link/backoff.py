"""Reconnect pacing: the gRPC connection-backoff policy with a random first delay.

1 s initial, x1.6 per failure, capped at 120 s, each delay jittered by +-20 %.
The first delay after losing a working stream is random in [0, initial), so a
fleet that loses its hub together does not come back together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    initial_s: float = 1.0
    multiplier: float = 1.6
    max_s: float = 120.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def next_delay(self) -> float:
        """Delay before the next connection attempt; grows until `reset()`."""
        attempt = self._attempt
        self._attempt += 1
        if attempt == 0:
            return self.rng.uniform(0.0, self.initial_s)
        base = min(self.initial_s * self.multiplier ** (attempt - 1), self.max_s)
        return base * self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)

    def reset(self) -> None:
        """A stream worked: the next failure starts over with a random first delay."""
        self._attempt = 0
