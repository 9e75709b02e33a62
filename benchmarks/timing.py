"""Timing shared by the benchmarks: calls timed back to back with their baselines."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

ROUNDS = 7


def per_call(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn``, over ``number`` calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def alongside(
    fns: Mapping[str, Callable[[], Any]], number: int, rounds: int = ROUNDS
) -> dict[str, float]:
    """Median seconds per call of each of ``fns``, each round timing them all in turn.

    Alternating keeps a machine that gets busier or quieter from favouring one side.
    """
    return {name: wall for name, (wall, _) in timed(fns, number, rounds).items()}


def timed(
    fns: Mapping[str, Callable[[], Any]], number: int, rounds: int = ROUNDS
) -> dict[str, tuple[float, float]]:
    """Median seconds per call of each of ``fns``, on the clock and of this process's CPU.

    The CPU time leaves out the time spent waiting for a server or for a core
    on a busy machine: it is the client's own work.
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(number):
                fn()
            times[name].append(
                ((time.perf_counter() - wall) / number, (time.process_time() - cpu) / number)
            )
    return {
        name: (statistics.median(w for w, _ in found), statistics.median(c for _, c in found))
        for name, found in times.items()
    }


def side_by_side(
    ours: Callable[[], Any], base: Callable[[], Any], number: int, rounds: int = ROUNDS
) -> tuple[float, float]:
    """Median seconds per call of ``ours`` and of ``base``, timed alternately."""
    found = alongside({"ours": ours, "base": base}, number, rounds)
    return found["ours"], found["base"]


def load() -> str:
    """The machine's load averages (1, 5, 15 minutes), to print beside the figures."""
    return "load average {:.2f}, {:.2f}, {:.2f} on {} cores".format(
        *os.getloadavg(), os.cpu_count()
    )
