"""The ``api`` fixture: an :class:`~kvpio_mapping.testing.Api` on a fresh account."""

from __future__ import annotations

import pytest

from kvpio_mapping.testing import Api, TestAccount


@pytest.fixture
def api(kvpio_account: TestAccount) -> Api:
    """An authenticated session on a fresh, empty account."""
    return Api(kvpio_account.url, kvpio_account.api_key)
