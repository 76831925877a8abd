"""Reconnect delays: capped exponential backoff with jitter, replaceable in tests."""

from __future__ import annotations

import random
from typing import Protocol


class Backoff(Protocol):
    def next_delay(self) -> float:
        """Return the seconds to wait before the next attempt, and advance."""
        ...

    def reset(self) -> None:
        """Start again from the first delay, after a success."""
        ...


class ExponentialBackoff:
    """Delays of ``initial * multiplier**n`` seconds, capped at ``maximum``.

    ``jitter`` is the fraction of each delay that is random: with 0.5 a 4 s step
    waits between 2 and 4 s. Jitter spreads out cameras that failed together, so
    they do not all hit a recovering server at the same instant.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum, got initial={initial}, maximum={maximum}"
            )
        if multiplier < 1:
            raise ValueError(f"backoff multiplier must be at least 1, got {multiplier}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"backoff jitter must be between 0 and 1, got {jitter}")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier**self._attempt)
        self._attempt += 1
        return ceiling * (1 - self.jitter * self._rng.random())

    def reset(self) -> None:
        self._attempt = 0


class NoBackoff:
    """Zero-sleep backoff for tests; counts the delays it was asked for and the resets."""

    def __init__(self) -> None:
        self.calls = 0
        self.resets = 0

    def next_delay(self) -> float:
        self.calls += 1
        return 0.0

    def reset(self) -> None:
        self.resets += 1
