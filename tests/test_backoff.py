"""Backoff: capped delays, one log line per outage, and the give-up limit of batch runs."""

from __future__ import annotations

import logging

import pytest

from sidecar.sink import Backoff


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_backoff_gives_up_after_limit(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("sidecar.sink.time.monotonic", lambda: clock.now)
    backoff = Backoff(sleep=clock.sleep, give_up_after=100.0)
    error = ConnectionError("refused")
    with pytest.raises(ConnectionError):
        for _ in range(50):
            backoff.failed("polling", error)
    assert 100.0 < clock.now < 200.0


def test_backoff_logs_outage_once(monkeypatch, caplog):
    clock = Clock()
    monkeypatch.setattr("sidecar.sink.time.monotonic", lambda: clock.now)
    backoff = Backoff(sleep=clock.sleep)
    with caplog.at_level(logging.WARNING, logger="sidecar.sink"):
        for _ in range(10):
            backoff.failed("polling", ConnectionError("refused"))
        backoff.succeeded("polling")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "retrying with backoff" in messages[0]
    assert "succeeded again" in messages[1]


def test_backoff_delay_capped(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("sidecar.sink.time.monotonic", lambda: clock.now)
    backoff = Backoff(sleep=clock.sleep, maximum=4.0)
    before = 0.0
    gaps = []
    for _ in range(8):
        backoff.failed("polling", ConnectionError("refused"))
        gaps.append(clock.now - before)
        before = clock.now
    assert max(gaps) == pytest.approx(4.0)
    assert gaps[0] == pytest.approx(0.5)
