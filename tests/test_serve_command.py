"""`kvpio serve` without the server extra says what to install instead of a traceback."""

from __future__ import annotations

from typing import Any

import pytest

from kvpio_mapping import cli
from kvpio_mapping.server import commands


def test_serve_without_the_server_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def find_spec(name: str) -> Any:
        return None if name == "uvicorn" else object()

    monkeypatch.setattr(commands, "find_spec", find_spec)
    assert cli.main(["serve", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "uvicorn missing" in err
    assert "pip install 'kvpio-mapping[server]'" in err


def test_restart_delay_is_none_after_a_run_and_backs_off_after_failed_starts() -> None:
    from kvpio_mapping.server.serve import restart_delay

    assert [restart_delay(n) for n in range(8)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]
    assert restart_delay(100) == 5.0


def test_connection_cap_leaves_room_below_the_open_file_limit() -> None:
    from kvpio_mapping.server.serve import connection_cap

    assert [connection_cap(n) for n in (256, 1024, 20_000)] == [192, 922, 18_000]
