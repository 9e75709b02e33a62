"""The README's first command runs ``examples/demo.py``: it must keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


@pytest.mark.slow
def test_the_demo_starts_a_server_uses_the_bucket_and_stops_it() -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "kvpio serving on http://127.0.0.1:" in done.stdout
    assert "bucket['my_key/baz/faz'] -> [1, 2, 3]" in done.stdout
    assert "render with data -> workers=8, faz=[1, 2, 3]" in done.stdout
