"""Two daemon processes on one source and one checkpoint: one works while the other waits, and no flow is alerted twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

import pytest
import yaml

from sidecar.config import from_dict
from tests.flowdocs import create_flow_index, index_docs, sample_rows, stamp
from tests.test_faults import alert_flow_ids, checkpoint_version, config_data, expected_flow_ids, reset

pytestmark = pytest.mark.es

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE = datetime(2017, 7, 4, 9, 0, tzinfo=timezone.utc)
NAME = "twodaemons"
STANDBY = "standing by until its lease expires"
WRITTEN = re.compile(r"alerts written: (\d+), already present: (\d+)")


def start(config: Path, log: IO[str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "run", "--config", str(config), *extra],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT, text=True,
    )


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}")
        time.sleep(0.1)


def written(output: str) -> int:
    match = WRITTEN.search(output)
    assert match, f"no summary line in:\n{output[-2000:]}"
    return int(match.group(1))


def test_second_daemon_stands_by_then_takes_over(es, es_url, index_name, data_dir, tmp_path) -> None:
    reset(es, NAME)
    docs = stamp(sample_rows(data_dir, per_file=2500), BASE, timedelta(milliseconds=5))
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    data = config_data(es_url, index_name, NAME, batch_size=5)
    data["state"]["lease_seconds"] = 8
    config = tmp_path / "eta1.yaml"
    config.write_text(yaml.safe_dump(data))
    expected = expected_flow_ids(from_dict(data), index_name, docs)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    with first_log.open("w") as first_out, second_log.open("w") as second_out:
        first = start(config, first_out)
        second = None
        try:
            wait_for(lambda: checkpoint_version(es, NAME) >= 2, 60, "the first daemon to store a checkpoint")
            second = start(config, second_out, "--until-idle")
            wait_for(lambda: STANDBY in second_log.read_text(), 60, "the second daemon to stand by")
            # Both run side by side for a while; the second must keep waiting.
            time.sleep(3)
            assert second.poll() is None
            assert first.poll() is None, "the first daemon finished before the test could stop it; add flows"
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=60) == 0
            assert second.wait(timeout=120) == 0
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)

    first_text, second_text = first_log.read_text(), second_log.read_text()
    assert second_text.count(STANDBY) == 1, second_text[-3000:]
    assert "took over checkpoint" in second_text or "acquired by" in second_text
    assert "changed by" not in first_text + second_text, "the two daemons wrote the checkpoint concurrently"
    flow_ids = alert_flow_ids(es, NAME)
    assert len(flow_ids) == len(set(flow_ids))
    assert set(flow_ids) == expected
    assert written(first_text) > 0
    assert written(second_text) > 0, "the second daemon had nothing left to do; add flows"
    assert written(first_text) + written(second_text) == len(expected), "an alert was created by both daemons"
    reset(es, NAME)


def test_stale_lease_of_killed_daemon_is_taken(es, es_url, index_name, data_dir, tmp_path) -> None:
    name = NAME + "-killed"
    reset(es, name)
    docs = stamp(sample_rows(data_dir, per_file=2500), BASE, timedelta(milliseconds=5))
    create_flow_index(es, index_name)
    index_docs(es, index_name, docs)
    data = config_data(es_url, index_name, name, batch_size=5)
    data["state"]["lease_seconds"] = 600
    config = tmp_path / "eta1.yaml"
    config.write_text(yaml.safe_dump(data))
    expected = expected_flow_ids(from_dict(data), index_name, docs)

    with (tmp_path / "first.log").open("w") as out:
        first = start(config, out)
        try:
            wait_for(lambda: checkpoint_version(es, name) >= 2, 60, "the first daemon to store a checkpoint")
        finally:
            first.kill()
            first.wait(timeout=10)
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "sidecar.cli", "run", "--config", str(config), "--until-idle"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    assert second.returncode == 0, second.stderr[-2000:]
    assert time.monotonic() - started < 100, "the second daemon waited for the 600 s lease of a dead process"
    assert STANDBY not in second.stderr
    flow_ids = alert_flow_ids(es, name)
    assert len(flow_ids) == len(set(flow_ids))
    assert set(flow_ids) == expected
    reset(es, name)
