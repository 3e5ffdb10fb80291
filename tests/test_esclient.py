"""The client's JSON serializer: orjson, with the json module for what orjson rejects."""

from __future__ import annotations

import json

import pytest
from elastic_transport import SerializationError

from sidecar.config import ClusterConfig
from sidecar.esclient import FastJsonSerializer, make_client


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"a": 1.5, "b": "x"}', {"a": 1.5, "b": "x"}),
        (b'{"a": 1e400}', {"a": float("inf")}),
        (b'{"a": "\xed\xa0\x80"}', {"a": "\ud800"}),  # a lone surrogate as Elasticsearch returns it
    ],
)
def test_loads(raw: bytes, expected: dict) -> None:
    assert FastJsonSerializer().loads(raw) == expected


def test_loads_garbage_still_fails() -> None:
    with pytest.raises(SerializationError):
        FastJsonSerializer().loads(b'{"a": ')


def test_dumps_falls_back_to_ascii_escapes() -> None:
    serializer = FastJsonSerializer()
    assert json.loads(serializer.dumps({"a": "caf\u00e9"})) == {"a": "caf\u00e9"}
    assert serializer.dumps({"a": "\ud800"}) == b'{"a":"\\ud800"}'


def test_client_uses_it_for_both_json_types() -> None:
    client = make_client(ClusterConfig(hosts=("http://127.0.0.1:9",)))
    for mimetype in ("application/json", "application/vnd.elasticsearch+json"):
        assert isinstance(client.transport.serializers.get_serializer(mimetype), FastJsonSerializer)
