"""Check the detection route's query parameters before anything touches the cluster.

Everything here is pure: it turns a raw query string plus the API configuration
into a ``ScanRequest`` or raises an ``HttpError`` carrying the status, the
parameter at fault and the expected format. ``sidecar.api`` turns those errors
into JSON responses.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs

from sidecar.config import ApiConfig
from sidecar.errors import SidecarError
from sidecar.timeutil import parse_time

TIME_FORMAT = "YYYY-mm-ddTHH:MM:SS[.ffffff]+HH:MM or ...Z, e.g. 2020-08-04T11:25:00.000000%2B08:00 in the URL"
INDEX_FORMAT = (
    "one concrete index name: lowercase letters, digits, '_', '-' and '.', starting with a letter or digit, "
    "e.g. cic_20200804"
)
PARAMETERS = ("index", "start_time", "end_time")

# Maximum length of a time parameter, in characters (the old format has 32).
MAX_TIME_LENGTH = 64
# Elasticsearch's own limit on index names, in UTF-8 bytes.
MAX_INDEX_BYTES = 255
# A query string with more fields than this is rejected before decoding the rest.
MAX_QUERY_FIELDS = 20

_PLAIN_INDEX = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

# Characters that turn a name into something other than one index, each with the reason.
_FORBIDDEN_CHARACTERS: tuple[tuple[str, str], ...] = (
    ("*", "wildcards ('*', '?') match several indices"),
    ("?", "wildcards ('*', '?') match several indices"),
    (",", "a comma lists several indices"),
    (":", "':' names an index on a remote cluster"),
    ("<", "'<...>' is date math"),
    (">", "'<...>' is date math"),
    ("/", "'/' is a path separator"),
    ("\\", "'\\' is not allowed in index names"),
    ("#", "'#' is not allowed in index names"),
    ('"', "'\"' is not allowed in index names"),
    ("|", "'|' is not allowed in index names"),
)


class HttpError(SidecarError):
    """An error response: HTTP status, a machine-readable kind, and a message that states the fix."""

    status = 500
    kind = "internal"

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        expected: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.parameter = parameter
        self.expected = expected
        self.headers = dict(headers or {})
        # Validated request parameters, for the request log line.
        self.context = ""

    def to_dict(self) -> dict[str, object]:
        """Return the JSON body of the error response."""
        body: dict[str, object] = {"status": self.status, "error": self.kind, "message": self.message}
        if self.parameter is not None:
            body["parameter"] = self.parameter
        if self.expected is not None:
            body["expected"] = self.expected
        return body


class InvalidParameter(HttpError):
    """A missing, repeated or malformed query parameter, or an invalid time window."""

    status = 400
    kind = "invalid_parameter"


class InvalidIndexName(HttpError):
    """An index parameter that is not one plain concrete index name."""

    status = 400
    kind = "invalid_index_name"


class IndexForbidden(HttpError):
    """A valid index name outside the patterns the API may read."""

    status = 403
    kind = "index_forbidden"


class IndexNotFound(HttpError):
    """An allowed index name that the cluster does not have."""

    status = 404
    kind = "index_not_found"


@dataclass(frozen=True)
class ScanRequest:
    """A validated detection request: one index and the window [start, end)."""

    index: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class IndexPolicy:
    """Index patterns the API may read, in fnmatch syntax. A name must match an include and no exclude."""

    include: tuple[str, ...]
    exclude: tuple[str, ...] = field(default=())

    @classmethod
    def from_config(cls, api: ApiConfig, source_index: str) -> IndexPolicy:
        """Build the policy from api.allowed_indices, or from source.index when that is empty.

        Both are comma-separated. A pattern with a leading '-' excludes, as in
        Elasticsearch's multi-target syntax, so ``cic_*,-cic_private*`` works.
        """
        text = api.allowed_indices.strip() or source_index
        patterns = [part.strip() for part in text.split(",") if part.strip()]
        include = tuple(pattern for pattern in patterns if not pattern.startswith("-"))
        exclude = tuple(pattern[1:] for pattern in patterns if pattern.startswith("-") and len(pattern) > 1)
        return cls(include=include, exclude=exclude)

    def allows(self, index: str) -> bool:
        """Return whether the index matches an include pattern and no exclude pattern."""
        if not any(fnmatch.fnmatchcase(index, pattern) for pattern in self.include):
            return False
        return not any(fnmatch.fnmatchcase(index, pattern) for pattern in self.exclude)

    def describe(self) -> str:
        """Return the patterns as one comma-separated string, excludes with their '-'."""
        return ",".join([*self.include, *(f"-{pattern}" for pattern in self.exclude)]) or "(none)"


def shown(value: str, limit: int = 80) -> str:
    """Return a quoted, length-capped rendering of client input, safe to put in messages and logs."""
    text = value if len(value) <= limit else value[: limit - 3] + "..."
    return repr(text)


def parse_query(query_string: str) -> dict[str, str]:
    """Decode the detection route's parameters, each of which must appear exactly once.

    Decoding follows HTML form rules, so ``%2B`` becomes '+' and a bare '+'
    becomes a space, which ``parse_time`` reads back as the offset's '+'.
    Unknown parameters are ignored.
    """
    try:
        decoded = parse_qs(query_string, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        raise InvalidParameter(
            f"the query string has more than {MAX_QUERY_FIELDS} parameters; send only index, start_time and end_time",
        ) from None
    missing = [name for name in PARAMETERS if name not in decoded]
    if missing:
        raise InvalidParameter(
            f"missing query parameter{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            "send index, start_time and end_time",
            parameter=missing[0],
            expected=INDEX_FORMAT if missing[0] == "index" else TIME_FORMAT,
        )
    values: dict[str, str] = {}
    for name in PARAMETERS:
        if len(decoded[name]) > 1:
            raise InvalidParameter(
                f"query parameter {name} is given {len(decoded[name])} times; send it once",
                parameter=name,
            )
        values[name] = decoded[name][0]
    return values


def check_index_name(name: str) -> None:
    """Raise InvalidIndexName unless name is one plain concrete index name.

    This rejects every syntax that Elasticsearch expands into other indices or
    routes elsewhere: wildcards, lists, ``_all`` and other ``_`` names,
    exclusions, hidden and system indices (leading '.'), remote clusters and
    date math. The final allow-list is stricter than Elasticsearch (ASCII only).
    """
    reason = _index_name_problem(name)
    if reason is not None:
        raise InvalidIndexName(
            f"invalid index name {shown(name)}: {reason}; pass one concrete index name such as cic_20200804",
            parameter="index",
            expected=INDEX_FORMAT,
        )


def _index_name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name.encode("utf-8")) > MAX_INDEX_BYTES:
        return f"it is longer than {MAX_INDEX_BYTES} bytes"
    if name == "_all" or name.startswith("_"):
        return "names starting with '_' (such as _all) are reserved by Elasticsearch"
    if name.startswith("-"):
        return "a leading '-' excludes indices"
    if name.startswith("+"):
        return "a leading '+' is not allowed in index names"
    if name.startswith("."):
        return "names starting with '.' are hidden or system indices"
    if ".." in name:
        return "'..' is not allowed in index names"
    for character, reason in _FORBIDDEN_CHARACTERS:
        if character in name:
            return reason
    if any(character.isspace() for character in name):
        return "it contains whitespace"
    if name != name.lower():
        return "index names are lowercase"
    if not _PLAIN_INDEX.match(name):
        return "it contains characters other than lowercase letters, digits, '_', '-' and '.'"
    return None


def parse_window_time(name: str, raw: str) -> datetime:
    """Parse start_time or end_time. A time without a UTC offset is rejected, not guessed."""
    if len(raw) > MAX_TIME_LENGTH:
        raise InvalidParameter(
            f"{name}: {shown(raw)} is longer than {MAX_TIME_LENGTH} characters; send a time in the expected format",
            parameter=name,
            expected=TIME_FORMAT,
        )
    try:
        moment = parse_time(raw)
    except ValueError:
        if _parses_without_offset(raw):
            # The old service's clients sent local times with +08:00; guessing UTC
            # would shift the window by hours and silently miss the attack flows.
            raise InvalidParameter(
                f"{name}: {shown(raw)} has no UTC offset; append one such as +08:00 (sent as %2B08:00) or Z",
                parameter=name,
                expected=TIME_FORMAT,
            ) from None
        raise InvalidParameter(
            f"{name}: {shown(raw)} is not a valid time; send it in the expected format",
            parameter=name,
            expected=TIME_FORMAT,
        ) from None
    try:
        moment.astimezone(timezone.utc)
    except OverflowError:
        raise InvalidParameter(
            f"{name}: {shown(raw)} is out of range in UTC; send a time between the years 1 and 9999",
            parameter=name,
            expected=TIME_FORMAT,
        ) from None
    return moment


def _parses_without_offset(raw: str) -> bool:
    try:
        parse_time(raw, default_tz=timezone.utc)
    except (ValueError, OverflowError):
        return False
    return True


def parse_scan_request(query_string: str, api: ApiConfig, policy: IndexPolicy) -> ScanRequest:
    """Validate the detection route's query: 400 for malformed input, then 403 for a forbidden index."""
    values = parse_query(query_string)
    index = values["index"]
    check_index_name(index)

    start = parse_window_time("start_time", values["start_time"])
    end = parse_window_time("end_time", values["end_time"])
    if start >= end:
        raise InvalidParameter(
            f"start_time {start.isoformat()} is not before end_time {end.isoformat()}; "
            "the window is [start_time, end_time), so start_time must be the earlier time",
            parameter="start_time",
            expected=TIME_FORMAT,
        )
    window = (end - start).total_seconds()
    limit = api.max_window_seconds
    if limit > 0 and window > limit:
        raise InvalidParameter(
            f"the window from start_time to end_time is {window:g} s, longer than api.max_window_seconds "
            f"({limit:g} s); split it into windows of at most {limit:g} s",
            parameter="end_time",
            expected=TIME_FORMAT,
        )

    if not policy.allows(index):
        forbidden = IndexForbidden(
            f"index {shown(index)} is outside the indices this API may read ({policy.describe()}); "
            "use a matching index, or ask the operator to add it to api.allowed_indices",
            parameter="index",
        )
        forbidden.context = f"index={index}"
        raise forbidden
    return ScanRequest(index=index, start=start, end=end)
