"""Build the Elasticsearch client from the cluster configuration."""

from __future__ import annotations

import json
import logging

from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch.serializer import OrjsonSerializer
from elastic_transport import SerializationError

from sidecar.config import ClusterConfig
from sidecar.logsetup import MASK

log = logging.getLogger(__name__)


class FastJsonSerializer(OrjsonSerializer):
    """JSON serializer that uses orjson, and the json module for what orjson rejects.

    Decoding search pages with orjson made the daemon 1.18x faster in the
    benchmarks (bench/RESULTS.md). orjson rejects some JSON that the json
    module reads, such as a number beyond the range of a double. A lone UTF-16
    surrogate indexed as an escape comes back from Elasticsearch as three
    bytes that are not UTF-8, and neither parser reads those. Decoding them
    with ``surrogatepass`` keeps one such flow from failing its whole page.
    """

    def loads(self, data: bytes | str) -> Any:
        try:
            return super().loads(data)
        except SerializationError as error:
            cause = error.errors[0] if error.errors else error
            log.info("orjson failed to decode a response (%s); decoding it with the json module", cause)
            text = data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else data
            try:
                return json.loads(text)
            except ValueError:
                raise error from None

    def dumps(self, data: Any) -> bytes:
        try:
            return super().dumps(data)
        except SerializationError as error:
            # ASCII output escapes what orjson rejects, such as a lone surrogate.
            cause = error.errors[0] if error.errors else error
            log.info("orjson failed to encode a request body (%s); encoding it with the json module", cause)
            try:
                return json.dumps(data, default=self.default, separators=(",", ":")).encode("ascii")
            except (TypeError, ValueError, SerializationError):
                raise error from None


def make_client(cluster: ClusterConfig, *, retries: int = 0) -> Elasticsearch:
    """Return a client for the configured cluster; TLS verification stays on unless configured off.

    ``retries`` is the transport's own retry count; the daemon keeps it at 0
    and retries whole operations itself, so it can log an outage once.
    """
    MASK.add(cluster.secrets())
    kwargs: dict = {
        "request_timeout": cluster.request_timeout,
        "max_retries": retries,
        "retry_on_timeout": retries > 0,
        # The transport marks a failed node dead for up to 30 s by default,
        # which delays recovery after an outage; the daemon backs off itself.
        "max_dead_node_backoff": 2.0,
        "serializer": FastJsonSerializer(),
    }
    if cluster.api_key:
        kwargs["api_key"] = cluster.api_key
    elif cluster.username:
        kwargs["basic_auth"] = (cluster.username, cluster.password or "")
    if any(host.startswith("https://") for host in cluster.hosts):
        kwargs["verify_certs"] = cluster.verify_certs
        if cluster.ca_certs:
            kwargs["ca_certs"] = cluster.ca_certs
        if not cluster.verify_certs:
            kwargs["ssl_show_warn"] = False
            log.warning("TLS certificate verification is off (cluster.verify_certs: false); "
                        "connections can be intercepted")
    return Elasticsearch(list(cluster.hosts), **kwargs)
