"""Run ``kvpio`` on a real pseudo-terminal, answering its question if it asks one."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time


def on_terminal(
    *argv: str, answer: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Run ``kvpio ARGV...`` on a pseudo-terminal; its exit code and all it showed."""
    return run_on_terminal([sys.executable, "-m", "kvpio_mapping", *argv], answer=answer, env=env)


def run_on_terminal(
    command: list[str],
    *,
    answer: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> tuple[int, str]:
    """Run with stdin, stdout and stderr on one pseudo-terminal; its exit code and all it showed."""
    leader, follower = os.openpty()
    process = subprocess.Popen(
        command,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
        env=env,
        cwd=cwd,
    )
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 30
    answered = answer is None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            shown += chunk
        if not answered and b"[y/N] " in shown:
            os.write(leader, (answer or "").encode() + b"\n")
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(leader)
    code = process.wait(timeout=10)
    return code, shown.decode().replace("\r\n", "\n")
