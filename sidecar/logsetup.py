"""Logging set-up for the CLI: one format, secrets masked in every record."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

# user:password@ in URLs, and Authorization headers, whatever the secret is.
_URL_CREDENTIALS = re.compile(r"(?<=//)[^/@\s:]+:[^/@\s]+@")
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(basic|apikey|bearer)\s+[A-Za-z0-9+/=._-]+")


class SecretMaskingFilter(logging.Filter):
    """Replace registered secrets, URL credentials and Authorization values with ***."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more secrets to mask (empty strings are ignored)."""
        for secret in secrets:
            if secret and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def mask(self, text: str) -> str:
        """Return text with every known secret replaced by ***."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = _URL_CREDENTIALS.sub("***@", text)
        return _AUTH_HEADER.sub(r"\1\2 ***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked = self.mask(message)
        record.msg, record.args = masked, None
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


MASK = SecretMaskingFilter()


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> SecretMaskingFilter:
    """Send logs to stderr with timestamps; mask the given secrets. Call once, from the CLI."""
    MASK.add(secrets)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(MASK)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_eta1", False):
            root.removeHandler(old)
    handler._eta1 = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The transport logs every request at INFO; keep its warnings only.
    logging.getLogger("elastic_transport").setLevel(logging.WARNING)
    logging.getLogger("elasticsearch").setLevel(logging.WARNING)
    # The node pool warns on every failed attempt; ETA1 logs an outage once itself.
    logging.getLogger("elastic_transport.node_pool").setLevel(logging.ERROR)
    return MASK
