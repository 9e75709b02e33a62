"""Test vectors of the kvp.io v1 contract (../shared/kvpio-v1.md), shared by the suites."""

from __future__ import annotations

from typing import Any

NESTED: list[Any] = [1, {"10": "Ten", "20": [46], "2": "two"}, 3]
"""The list stored under ``foo`` in the contract's path and template vectors."""

TEMPLATE_ROWS: list[tuple[str, Any, str]] = [
    ("Test template: {{ foo }} should equal bar", "bar", "Test template: bar should equal bar"),
    (
        "Test template: {{ foo.bar.baz }} should equal 123",
        {"bar": {"baz": 123}},
        "Test template: 123 should equal 123",
    ),
    (
        'What is {{ foo[1]["20"][0] }} and {{ foo[1]["2"] }} about anyway...',
        NESTED,
        "What is 46 and two about anyway...",
    ),
]
"""(template source, value stored under ``foo``, rendered text)."""
