"""ETA1: classify network flows stored in Elasticsearch and write ATT&CK-tagged alerts.

Data path: source (cursor) -> features -> model -> rules -> sink (alerts, checkpoint).
"""

__version__ = "0.1.0"
