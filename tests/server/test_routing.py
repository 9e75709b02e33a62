"""The app's routing table: a path under a whole-path route goes to it, whatever it holds."""

from __future__ import annotations

import pytest

from kvpio_mapping.server.app import create_app
from kvpio_mapping.server.storage import MemoryStorage


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/bucket/x", "/v1/bucket/{path:path}"),
        ("/v1/bucket/x/y/z", "/v1/bucket/{path:path}"),
        ("/v1/bucket/", "/v1/bucket/"),
        ("/v1/bucket", "/v1/bucket"),
        ("/v1/templates/t", "/v1/templates/{path:path}"),
        ("/v1/templates/", "/v1/templates/"),
    ],
)
def test_each_path_finds_its_route(path: str, template: str) -> None:
    app = create_app(MemoryStorage())
    found = app._router.find(path)
    assert found is not None and found[3] == template


def test_a_route_below_a_whole_path_route_is_refused() -> None:
    app = create_app(MemoryStorage())
    with pytest.raises(ValueError, match="lies below"):
        app.add_route("/v1/bucket/special", object())
