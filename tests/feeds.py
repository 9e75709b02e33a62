"""What the change-feed tests share: bounded polling, writer processes, a watch collector."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kvpio_mapping.changes import Change
from kvpio_mapping.testing import TestAccount
from kvpio_mapping.watch import Watch

ROOT = Path(__file__).resolve().parents[1]


def until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 5 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


WRITER = """
import sys
from kvpio_mapping import KVBucket
bucket = KVBucket(sys.argv[1], sys.argv[2], ttl=0)
for n in range(int(sys.argv[4])):
    bucket[sys.argv[3]] = n
"""


def writers(account: TestAccount, count: int, writes: int) -> list[subprocess.Popen[bytes]]:
    """``count`` processes, writer ``w`` storing 0 .. ``writes - 1`` in turn at ``w{w}``."""
    return [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, account.url, account.api_key, f"w{w}", str(writes)],
            cwd=ROOT,
        )
        for w in range(count)
    ]


class Collector:
    """Iterates a watch in a thread, collecting its changes."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.changes: list[Change] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for change in self.watch:
                self.changes.append(change)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Change]:
        assert until(lambda: len(self.changes) >= count, timeout), self.changes[-5:]
        return self.changes[:count]

    def stop(self) -> None:
        self.watch.close()
        self.thread.join(5)
        assert not self.thread.is_alive()
