"""Build the Elasticsearch client from the cluster configuration."""

from __future__ import annotations

import logging

from elasticsearch import Elasticsearch

from sidecar.config import ClusterConfig
from sidecar.logsetup import MASK

log = logging.getLogger(__name__)


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
