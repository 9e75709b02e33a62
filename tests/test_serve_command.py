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
