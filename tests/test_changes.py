"""The change feed's rules with no I/O: lines in, changes, ready marks and requests out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvpio_mapping.changes import MAX_PAUSE, Change, Event, Follow, Ready, parse_events
from kvpio_mapping.errors import AuthenticationError, TransportError


def feed(follow: Follow, *lines: str) -> list[Change | Ready]:
    for line in lines:
        follow.receive(line)
    out = []
    while (found := follow.next()) is not None:
        out.append(found)
    return out


def test_the_first_request_asks_for_a_snapshot_and_a_resume_names_the_last_revision() -> None:
    follow = Follow(("cfg", "a b"))
    assert follow.request().target == "bucket/cfg/a%20b"
    assert follow.request().headers == {"Accept": "text/event-stream"}
    feed(follow, "event: snapshot", "id: 4", 'data: {"data": 1}', "")
    assert follow.request().headers == {"Accept": "text/event-stream", "Last-Event-ID": "4"}
    assert Follow(snapshot=False).request().target == "bucket/?snapshot=false"


def test_a_revisions_changes_come_out_together_once_its_id_arrives() -> None:
    follow = Follow(("cfg",), revision=3)
    first = ["event: put", 'data: {"path": "a", "data": 1}', ""]
    assert feed(follow, *first) == []
    last = ["event: delete", "id: 4", 'data: {"path": "b"}', ""]
    assert feed(follow, *last) == [Change("put", "cfg/a", 1, 4), Change("delete", "cfg/b", None, 4)]
    assert feed(follow, "event: ready", "id: 4", "data: {}", "") == [Ready(resumed=True)]


def test_a_connection_lost_in_the_middle_of_a_revision_drops_its_first_half() -> None:
    follow = Follow(revision=3)
    feed(follow, "event: put", 'data: {"path": "a", "data": 1}', "")
    follow.lost()
    assert follow.request().headers == {"Accept": "text/event-stream", "Last-Event-ID": "3"}
    assert feed(follow, "event: put", "id: 4", 'data: {"path": "b", "data": 2}', "") == [
        Change("put", "b", 2, 4)
    ]


def test_pauses_grow_while_attempts_fail_and_a_503_waits_as_told() -> None:
    follow = Follow()
    assert [follow.lost() for _ in range(7)] == [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    assert follow.lost() == MAX_PAUSE
    busy = SimpleNamespace(status_code=503, headers={"Retry-After": "5"}, content=b"", url="")
    with pytest.raises(TransportError):
        follow.opened(busy)
    assert follow.lost() == 5.0
    feed(follow, "event: ready", "id: 1", "data: {}", "")
    assert follow.lost() == 0.0


def test_a_revoked_key_ends_the_watch_and_a_closing_server_asks_for_a_reconnect() -> None:
    follow = Follow()
    with pytest.raises(TransportError, match="server closing"):
        feed(follow, "event: end", 'data: {"reason": "server closing"}', "")
    assert not follow.stopped
    with pytest.raises(AuthenticationError, match="key revoked"):
        feed(follow, "event: end", 'data: {"reason": "key revoked"}', "")
    assert follow.stopped


def test_a_stream_that_keeps_ending_before_it_is_ready_backs_off() -> None:
    follow = Follow()
    pauses = []
    for _ in range(4):
        with pytest.raises(TransportError, match="server closing"):
            feed(follow, "event: end", 'data: {"reason": "server closing"}', "")
        pauses.append(follow.lost())
    assert pauses == [0.0, 0.05, 0.1, 0.2]
    feed(follow, "event: ready", "id: 1", "data: {}", "")
    with pytest.raises(TransportError):
        feed(follow, "event: end", 'data: {"reason": "server closing"}', "")
    assert follow.lost() == 0.0  # after a ready, at once


@pytest.mark.parametrize(
    "event",
    [
        ["event: snapshot", "id: 1", "data: [1]"],
        ["event: end", "data: 5"],
        ["event: put", "id: 1", 'data: {"path": "a"}'],
        ["event: put", "id: 1", 'data: {"path": 5, "data": 1}'],
        ["event: delete", "id: 1", 'data: {"path": "../x"}'],
        ["event: put", "id: 1", 'data: {"path": "a//b", "data": 1}'],
        ["event: template", "id: 1", 'data: {"source": "x"}'],
    ],
)
def test_a_garbled_event_is_a_value_error_for_a_reconnect_and_yields_nothing(
    event: list[str],
) -> None:
    follow = Follow(("w",))
    with pytest.raises(ValueError):
        feed(follow, *event, "")
    follow.lost()
    assert follow.next() is None


def test_parse_events_reads_fields_comments_and_id_only_blocks() -> None:
    lines = [
        ": keep-alive",
        "id: 4",
        "",
        "event: put",
        "data: {",
        "data: }",
        "",
        "data:x",
        "id:7",
        "",
    ]
    assert list(parse_events(lines)) == [
        Event("", "", "4"),
        Event("put", "{\n}", None),
        Event("message", "x", "7"),
    ]


# watch
