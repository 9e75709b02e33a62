"""Timing shared by the benchmarks: calls timed back to back with their baseline."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

ROUNDS = 7


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn``, over ``number`` calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def side_by_side(
    ours: Callable[[], Any], base: Callable[[], Any], number: int, rounds: int = ROUNDS
) -> tuple[float, float]:
    """Median seconds per call of each, timed alternately over ``rounds`` rounds.

    Alternating keeps a machine that gets busier or quieter from favouring one side.
    """
    ours_times, base_times = [], []
    for _ in range(rounds):
        ours_times.append(per_call(ours, number))
        base_times.append(per_call(base, number))
    return statistics.median(ours_times), statistics.median(base_times)
