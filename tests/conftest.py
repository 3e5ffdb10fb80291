"""Shared fixtures: a real Elasticsearch node for the tests marked ``es``.

The node starts once per session on a free loopback port (tests/es_node.py),
unless ETA1_ES_URL names a running cluster to use instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ETA1_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "cicids2017_improved_rnd2500"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the labelled sample flows (one gzip CSV per class)."""
    if not DATA_DIR.is_dir():
        pytest.fail(f"sample flows not found at {DATA_DIR}; set ETA1_DATA_DIR to the folder of *.csv.gz files")
    return DATA_DIR


@pytest.fixture(scope="session")
def es_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Elasticsearch node for this test session."""
    from tests import es_node

    url = es_node.es_url_from_env()
    if url:
        yield url
        return
    url, stop = es_node.start_node(tmp_path_factory.mktemp("es-node"))
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="session")
def es(es_url: str):
    """Elasticsearch client for the session's node."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(es_url, request_timeout=60)
    yield client
    client.close()


@pytest.fixture
def index_name(request: pytest.FixtureRequest, es) -> Iterator[str]:
    """A fresh flow index name (cic_ prefix, so the flow template applies), deleted after the test."""
    name = "cic_test_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:60]
    es.options(ignore_status=404).indices.delete(index=name)
    yield name
    es.options(ignore_status=404).indices.delete(index=name)
