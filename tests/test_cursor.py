"""Cursor arithmetic: what a restart re-reads and what it skips."""

from __future__ import annotations

from sidecar.source import Cursor


def h(index: str, flow_id: str, time: str) -> dict:
    return {"_index": index, "_id": flow_id, "sort": [time, 0]}


def test_advance_keeps_ids_at_last_time():
    cursor = Cursor().advance([h("i", "a", "t1"), h("i", "b", "t2"), h("i", "c", "t2")])
    assert cursor.time == "t2"
    assert cursor.seen == {"i": ["c", "b"]}


def test_advance_same_time_accumulates():
    first = Cursor().advance([h("i", "a", "t1"), h("i", "b", "t2")])
    second = first.advance([h("i", "c", "t2"), h("j", "d", "t2")])
    assert second.time == "t2"
    assert sorted(second.seen["i"]) == ["b", "c"]
    assert second.seen["j"] == ["d"]


def test_advance_new_time_drops_old_ids():
    first = Cursor().advance([h("i", "a", "t1")])
    second = first.advance([h("i", "b", "t2")])
    assert second.seen == {"i": ["b"]}


def test_round_trip_dict():
    cursor = Cursor(time="2017-07-05T18:12:15.650Z", seen={"i": ["a", "b"], "j": ["c"]})
    assert Cursor.from_dict(cursor.to_dict()) == cursor
    assert Cursor.from_dict(None) == Cursor()


def test_empty_page_keeps_cursor():
    cursor = Cursor(time="t", seen={"i": ["a"]})
    assert cursor.advance([]) is cursor
