"""A template's context is any value the bucket holds, however deep it was written."""

from __future__ import annotations

from typing import Any

from kvpio_mapping import connect


def test_a_value_written_at_the_deepest_path_renders_in_a_template(kvpio_account: Any) -> None:
    kv = connect(kvpio_account.url, kvpio_account.api_key)
    deep: Any = "bottom"
    for _ in range(99):
        deep = [deep]
    kv.bucket["/".join(["p"] * 32)] = deep
    kv.templates["t"] = "{{ p is defined }} {{ p.p.p is defined }}"
    assert kv.templates["t"] == "True True"
