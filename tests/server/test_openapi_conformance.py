"""The served OpenAPI document says exactly what the server does: a bounded schemathesis run.

Every operation of ``GET /openapi.json`` is exercised against a real server
with generated valid and invalid requests (schemathesis's positive and
negative modes), and every schemathesis check applies: status codes, content
types, headers and bodies must all be ones the document declares, valid
requests must be accepted and invalid ones refused.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from kvpio_mapping.testing import RunningServer, new_account, run_server

pytestmark = pytest.mark.slow

EXAMPLES = 60  # per operation and mode


@pytest.fixture(scope="module")
def served() -> Iterator[RunningServer]:
    with run_server(workers=1, render_timeout=1.0) as running:
        yield running


def _operations(served: RunningServer) -> list[schemathesis.APIOperation]:
    document = schemathesis.openapi.from_url(served.url + "/openapi.json")
    return [result.ok() for result in document.get_all_operations()]


def test_the_document_declares_every_operation_the_server_routes(served: RunningServer) -> None:
    labels = {operation.label for operation in _operations(served)}
    assert labels == {
        "GET /v1/account/",
        "GET /v1/bucket/",
        "POST /v1/bucket/",
        "DELETE /v1/bucket/",
        "GET /v1/bucket/{path}",
        "POST /v1/bucket/{path}",
        "DELETE /v1/bucket/{path}",
        "GET /v1/templates/",
        "GET /v1/templates/{name}",
        "POST /v1/templates/{name}",
        "DELETE /v1/templates/{name}",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }


def test_count_answers_are_the_documented_ones(served: RunningServer) -> None:
    """``count=true`` at an object, a list, a scalar (409) and nothing, which an empty
    bucket alone would never show."""
    http = requests.Session()
    http.auth = (new_account(served).api_key, "")
    for key, value in (("o", {"a": 1}), ("l", [1, 2]), ("s", "text")):
        http.post(f"{served.url}/v1/bucket/{key}", json=value).raise_for_status()
    operations = {operation.label: operation for operation in _operations(served)}
    statuses = [
        operations["GET /v1/bucket/"]
        .Case(query={"count": "true"})
        .call_and_validate(session=http, timeout=10)
        .status_code
    ]
    for key in ("o", "l", "s", "nothing"):
        case = operations["GET /v1/bucket/{path}"].Case(
            path_parameters={"path": key}, query={"count": "true"}
        )
        statuses.append(case.call_and_validate(session=http, timeout=10).status_code)
    assert statuses == [200, 200, 200, 409, 200]


def _meaningful_on_an_empty_bucket(case: schemathesis.Case) -> bool:
    """Whether a valid request's answer can be known without knowing what is stored.

    A body must be the kind its query says (a Commit for ``commit=true``, a
    number for ``op=increment``, an object for ``op=merge``): the document
    states this in words, as a body schema cannot depend on a query parameter.
    A condition naming an ETag (``If-Match``, a commit check with an ETag) can
    only hold for a value that is there, so on an empty bucket it fails with
    the documented 412: such requests are drawn in the negative run only.
    """
    if "If-Match" in (case.headers or {}):
        return False
    if case.operation.label == "POST /v1/bucket/{path}":
        kind = (case.query or {}).get("op")
        if kind == "increment":
            return type(case.body) in (int, float)
        if kind == "merge":
            return type(case.body) is dict and all(key and "/" not in key for key in case.body)
        return True
    if case.operation.label != "POST /v1/bucket/":
        return True
    committing = str((case.query or {}).get("commit")) in ("True", "true", "1")
    body = case.body
    is_commit = type(body) is dict and set(body) <= {"checks", "operations"}
    if committing != is_commit:
        return False
    checks = body.get("checks", []) if is_commit else []
    return all(check.get("etag") is None for check in checks)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_server_does_what_its_document_says(served: RunningServer, mode: GenerationMode) -> None:
    http = requests.Session()
    for operation in _operations(served):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            # Each example on an empty bucket of its own: what a request means depends on
            # what is stored (a segment below a list must be a position), and the document
            # describes requests, not sequences of them.
            if mode is GenerationMode.POSITIVE:
                assume(_meaningful_on_an_empty_bucket(case))
            http.auth = (new_account(served).api_key, "")
            case.call_and_validate(session=http, timeout=10)

        try:
            check()
        except Unsatisfiable:
            # Nothing of the operation can be made invalid (GET /v1/account/ takes no input).
            assert mode is GenerationMode.NEGATIVE, operation.label
