"""``eta1 load``: bulk-load CICFlowMeter CSV files (plain or gzip) into a flow index.

Each CSV row becomes one flow document:

* Column names in any naming scheme that ``sidecar.schema`` accepts are
  renamed to the canonical CICFlowMeter-4 names. Unknown columns (``id``,
  ``ICMP Type``, ``Attempted Category``) are kept under their own names as
  strings. With the ground-truth ``Label`` kept as a keyword, labelled data
  can be evaluated in place.
* Numeric fields become JSON numbers. ``Infinity``, ``NaN`` and empty cells
  are written as ``null``. ETA1's featuriser reads ``null`` as a missing value,
  the same as training treats ``Infinity``, and Elasticsearch accepts it.
* ``Timestamp`` keeps the CSV's text. Its parsed value, in UTC, goes to the
  time field (``source.time_field``, default ``@timestamp``).
* A bad row (wrong column count, invalid timestamp, a non-numeric value in a
  numeric field, an invalid IP address) is counted, reported with its
  file:line and skipped.

Loading is idempotent. A document's ``_id`` is a hash of the raw CSV row and
of the time shift of its copy. Documents are written with the bulk ``create``
operation. Elasticsearch returns 409 for a row that is already in the index,
the loader counts it as "already present", and the stored document is left
unchanged.
Because of this, loading a file again with another ``--timezone`` or
``--time-field`` does not rewrite its rows: delete the index first.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import fnmatch
import gzip
import hashlib
import ipaddress
import logging
import math
import os
import re
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import IO, Any, Protocol, TextIO, cast

from elasticsearch import ApiError, BadRequestError, Elasticsearch, TransportError
from elasticsearch.helpers import parallel_bulk, streaming_bulk

from sidecar import flow_index, schema
from sidecar.config import load_config, parse_offset
from sidecar.errors import LocatedError, SidecarError
from sidecar.features import coerce_value
from sidecar.timeutil import parse_time, to_utc_iso

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_BATCH_SIZE = 1000
# Concurrent bulk requests: Elasticsearch indexes one while the client builds and sends the next.
DEFAULT_THREADS = 2
DEFAULT_MAX_BAD_ROWS = 20
# One week: copies of a capture shorter than a week (the sample runs Monday to
# Friday) do not overlap, and each copy keeps the weekday and time of day of its rows.
DEFAULT_REPLICATE_STEP_SECONDS = 7 * 86400

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_EPOCH = re.compile(r"^\d{9,}(?:\.\d+)?$")
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# Rejection reasons: the categories the report counts.
WRONG_COLUMN_COUNT = "wrong column count"
INVALID_CSV = "invalid CSV"
INVALID_TIMESTAMP = "invalid timestamp"
NON_NUMERIC = "non-numeric value"
OUT_OF_RANGE = "number out of range"
INVALID_IP = "invalid IP address"


class LoadError(LocatedError):
    """A flow file that cannot be loaded at all, or an index that cannot take flows."""


class RowError(ValueError):
    """A CSV row that cannot become a flow document. ``reason`` is the category that the report counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --- Flow times --------------------------------------------------------------


def parse_flow_time(text: str, default_tz: tzinfo) -> datetime:
    """Parse a CICFlowMeter ``Timestamp`` cell into an aware datetime, or raise ValueError.

    Accepts whatever ``sidecar.timeutil.parse_time`` accepts (ISO-8601 with or
    without offset, the day-first formats of CIC-IDS2017 and CSE-CIC-IDS2018)
    and epoch numbers of at least 9 digits. The epoch unit follows the
    magnitude: seconds below 1e11, milliseconds below 1e14, microseconds below
    1e17, nanoseconds above. Epoch values are UTC. Other stamps without an
    offset take ``default_tz``.
    """
    value = text.strip()
    if _EPOCH.match(value):
        return _parse_epoch(value)
    return parse_time(value, default_tz)


def _parse_epoch(value: str) -> datetime:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"invalid epoch time {value!r}") from None
    if number < Decimal(10) ** 11:
        micros = number * 1_000_000
    elif number < Decimal(10) ** 14:
        micros = number * 1_000
    elif number < Decimal(10) ** 17:
        micros = number
    else:
        micros = number / 1_000
    return _UNIX_EPOCH + timedelta(microseconds=int(micros))


# --- CSV header -> document layout ------------------------------------------


def _header_names(cells: Sequence[str]) -> list[str]:
    """Return header cells without surrounding spaces or a byte-order mark."""
    return [cell.strip().lstrip("\ufeff").strip() for cell in cells]


@dataclass(frozen=True)
class RowLayout:
    """Mapping from CSV columns to document fields, grouped by how each cell's text is converted."""

    width: int
    time_column: int
    longs: tuple[tuple[int, str], ...]
    doubles: tuple[tuple[int, str], ...]
    ips: tuple[tuple[int, str], ...]
    strings: tuple[tuple[int, str], ...]
    # Header cells that feed no field, each with the reason.
    ignored: tuple[str, ...] = ()
    # Document keys of longs and doubles, in the same order (derived, for speed).
    long_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    double_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "long_keys", tuple(key for _, key in self.longs))
        object.__setattr__(self, "double_keys", tuple(key for _, key in self.doubles))

    @classmethod
    def from_header(cls, header: Sequence[str], time_path: Sequence[str]) -> RowLayout:
        """Build the layout for a CSV header. Raises ValueError when the header has no Timestamp column."""
        longs: list[tuple[int, str]] = []
        doubles: list[tuple[int, str]] = []
        ips: list[tuple[int, str]] = []
        strings: list[tuple[int, str]] = []
        ignored: list[str] = []
        seen: dict[str, int] = {}
        time_column: int | None = None

        for position, name in enumerate(_header_names(header)):
            if not name:
                ignored.append(f"column {position + 1} has no name")
                continue
            canonical = schema.canonical_name(name)
            key = canonical or name
            if key in seen:
                ignored.append(f"column {position + 1} ({name!r}) repeats column {seen[key] + 1} ({key!r})")
                continue
            if key == time_path[0]:
                raise ValueError(
                    f"column {position + 1} ({name!r}) has the name of the time field; "
                    "pass another --time-field, such as event.ingested"
                )
            seen[key] = position

            if canonical is None:
                strings.append((position, name))
                continue
            if canonical == schema.TIMESTAMP:
                time_column = position
            kind = flow_index.field_type(canonical)
            target = {"long": longs, "double": doubles, "ip": ips}.get(kind, strings)
            target.append((position, canonical))

        if time_column is None:
            accepted = ", ".join(repr(name) for name in schema.accepted_names(schema.TIMESTAMP))
            raise ValueError(
                f"no Timestamp column (accepted names: {accepted}); "
                "the flow time is required, so export the CSV with CICFlowMeter's Timestamp column"
            )
        return cls(
            width=len(header),
            time_column=time_column,
            longs=tuple(longs),
            doubles=tuple(doubles),
            ips=tuple(ips),
            strings=tuple(strings),
            ignored=tuple(ignored),
        )


# --- CSV row -> document (pure) ---------------------------------------------


def _describe(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _to_long(text: str, key: str) -> int | float | None:
    try:
        number: int | float = int(text)
    except ValueError:
        coerced = coerce_value(text)
        if isinstance(coerced, str):
            raise RowError(NON_NUMERIC, f"{key!r} is {_describe(text)}") from None
        if not math.isfinite(coerced):
            return None
        # "2683.0" is stored as 2683. A fractional value stays a float in
        # _source, and Elasticsearch indexes it truncated.
        number = int(coerced) if coerced.is_integer() else coerced
    if not _LONG_MIN <= number <= _LONG_MAX:
        raise RowError(OUT_OF_RANGE, f"{key!r} is {_describe(text)}, outside the 64-bit integer range")
    return number


def _to_double(text: str, key: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        coerced = coerce_value(text)
        if isinstance(coerced, str):
            raise RowError(NON_NUMERIC, f"{key!r} is {_describe(text)}") from None
        number = coerced
    return number if math.isfinite(number) else None


def _longs(cells: Sequence[str], columns: Sequence[tuple[int, str]]) -> list[int | float | None]:
    """Convert the long columns of a row: one pass of int() for the usual all-integer row."""
    try:
        values = [int(cells[position]) for position, _ in columns]
    except ValueError:
        return [_to_long(cells[position], key) for position, key in columns]
    if values and (max(values) > _LONG_MAX or min(values) < _LONG_MIN):
        return [_to_long(cells[position], key) for position, key in columns]
    return cast("list[int | float | None]", values)


def _doubles(cells: Sequence[str], columns: Sequence[tuple[int, str]]) -> list[float | None]:
    """Convert the double columns of a row: one pass of float() unless a cell is not a plain number."""
    try:
        values = [float(cells[position]) for position, _ in columns]
    except ValueError:
        return [_to_double(cells[position], key) for position, key in columns]
    if all(map(math.isfinite, values)):
        return cast("list[float | None]", values)
    return [value if math.isfinite(value) else None for value in values]


@lru_cache(maxsize=65536)
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def row_to_document(
    cells: Sequence[str],
    layout: RowLayout,
    *,
    time_path: Sequence[str],
    default_tz: tzinfo,
    shift: timedelta = timedelta(0),
) -> dict[str, Any]:
    """Convert one CSV row into a flow document, or raise RowError naming the first bad cell.

    ``shift`` is added to the flow time (``--replicate`` copies), while the
    ``Timestamp`` text stays as in the CSV.
    """
    if len(cells) != layout.width:
        raise RowError(WRONG_COLUMN_COUNT, f"{len(cells)} fields, the header has {layout.width}")

    document: dict[str, Any] = dict(zip(layout.long_keys, _longs(cells, layout.longs)))
    document.update(zip(layout.double_keys, _doubles(cells, layout.doubles)))
    for position, key in layout.ips:
        text = cells[position].strip()
        if not text:
            document[key] = None
        elif _is_ip(text):
            document[key] = text
        else:
            raise RowError(INVALID_IP, f"{key!r} is {_describe(text)}")
    for position, key in layout.strings:
        document[key] = cells[position]

    stamp = cells[layout.time_column]
    try:
        moment = parse_flow_time(stamp, default_tz) + shift
        iso = to_utc_iso(moment)
    except (ValueError, OverflowError) as error:
        raise RowError(INVALID_TIMESTAMP, f"{_describe(stamp)} ({error})") from None

    parent = document
    for part in time_path[:-1]:
        parent = parent.setdefault(part, {})
    parent[time_path[-1]] = iso
    return document


def document_id(raw_row: bytes, shift_micros: int = 0) -> str:
    """Return the document ``_id`` of a raw CSV row (line ending removed) loaded with a time shift.

    20 characters of URL-safe base64 over a 120-bit BLAKE2b digest, as long as
    an Elasticsearch auto-generated id. Shift 0 hashes the row alone, so a
    plain load and copy 0 of a ``--replicate`` load write the same documents.
    """
    digest = hashlib.blake2b(raw_row, digest_size=15)
    if shift_micros:
        digest.update(b"\x00shift_us=%d" % shift_micros)
    return base64.urlsafe_b64encode(digest.digest()).decode("ascii")


# --- Reading files ------------------------------------------------------------


class FlowFile:
    """An open CSV file, plain or gzip (detected by its first two bytes)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise LoadError("file not found; check the path", path) from None
        except IsADirectoryError:
            raise LoadError("is a folder; pass the CSV files inside it (e.g. DIR/*.csv.gz)", path) from None
        except OSError as error:
            raise LoadError(f"cannot be opened ({error.strerror}); check its permissions", path) from None
        self.size = os.fstat(self._raw.fileno()).st_size
        self.compressed = self._raw.read(2) == GZIP_MAGIC
        self._raw.seek(0)
        self.stream: IO[bytes] = (
            gzip.GzipFile(fileobj=self._raw, mode="rb") if self.compressed else self._raw  # type: ignore[assignment]
        )

    def bytes_read(self) -> int:
        """Return how many bytes of the file (compressed bytes for gzip) have been read."""
        return self._raw.tell()

    def close(self) -> None:
        """Close the file."""
        if self.stream is not self._raw:
            self.stream.close()
        self._raw.close()

    def __enter__(self) -> FlowFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _LineReader:
    """Feed decoded lines to ``csv.reader`` and keep the raw bytes and line numbers of each row."""

    def __init__(self, stream: IO[bytes]):
        self._lines = iter(stream)
        self.line = 0
        self.first_line = 0
        self._parts: list[bytes] = []

    def __iter__(self) -> _LineReader:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        self.line += 1
        if not self._parts:
            self.first_line = self.line
        self._parts.append(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # The original CIC-IDS2017 CSVs carry Windows-1252 bytes (an en dash in labels).
            return raw.decode("cp1252", errors="replace")

    def take_row(self) -> tuple[int, bytes]:
        """Return the first line number and raw bytes (line ending removed) of the row just parsed."""
        raw = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        return self.first_line, raw.rstrip(b"\r\n")


_READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One row of a flow file: its first line number, raw bytes and cells."""

    line: int
    raw: bytes
    cells: list[str] | None  # None when the line is not valid CSV
    error: str = ""


def _read_header(reader: Iterator[list[str]], lines: _LineReader, path: str) -> CsvRow:
    for cells in reader:
        line, raw = lines.take_row()
        if cells:
            return CsvRow(line, raw, cells)
    raise LoadError("is empty; expected a CSV header line such as 'Flow ID,Src IP,...,Timestamp,...'", path)


def iter_rows(flow_file: FlowFile) -> Iterator[CsvRow]:
    """Yield the header row (first) and then each data row of an open flow file, skipping blank lines.

    Raises LoadError when the file cannot be read to its end, such as a
    truncated or corrupt gzip file. Rows before the error have been yielded.
    """
    path = flow_file.path
    lines = _LineReader(flow_file.stream)
    reader = csv.reader(lines)
    try:
        yield _read_header(reader, lines, path)
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                line, raw = lines.take_row()
                yield CsvRow(line, raw, None, str(error))
                continue
            line, raw = lines.take_row()
            if cells:
                yield CsvRow(line, raw, cells)
    except _READ_ERRORS as error:
        kind = "gzip data" if flow_file.compressed else "file"
        where = f"after line {lines.line}" if lines.line else "at the start"
        raise LoadError(
            f"unreadable {kind} {where} ({error}); the file is truncated or corrupt, "
            "so copy or export it again and reload it (rows already sent stay in the index and are not duplicated)",
            path,
        ) from None


def read_layout(path: str, time_path: Sequence[str]) -> RowLayout:
    """Open a flow file, check that its header can be loaded, and return its layout."""
    with FlowFile(path) as flow_file:
        header = next(iter_rows(flow_file))
    assert header.cells is not None
    try:
        layout = RowLayout.from_header(header.cells, time_path)
    except ValueError as error:
        raise LoadError(str(error), path, header.line) from None
    for problem in layout.ignored:
        log.warning("%s: %s; that column is not loaded", path, problem)
    return layout


# --- Report -------------------------------------------------------------------


@dataclass(frozen=True)
class BadRow:
    """A row that was not loaded, with where it is and why."""

    path: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.detail}"


@dataclass
class LoadReport:
    """Counts of one load, by outcome, and the first rejected rows in detail."""

    index: str
    files: int = 0
    copies: int = 1
    loaded: int = 0
    already_present: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    bad_rows: list[BadRow] = field(default_factory=list)
    # Lines equal to the file's header, as in CSVs concatenated from several exports.
    repeated_headers: int = 0
    seconds: float = 0.0
    max_bad_rows: int = DEFAULT_MAX_BAD_ROWS

    @property
    def rejected_total(self) -> int:
        """Number of rows not loaded because they were bad or Elasticsearch rejected them."""
        return sum(self.rejected.values())

    @property
    def rows(self) -> int:
        """Number of data rows processed: loaded, already present or rejected."""
        return self.loaded + self.already_present + self.rejected_total

    def reject(self, path: str, line: int, reason: str, detail: str) -> None:
        """Count a rejected row; keep its details while fewer than max_bad_rows are kept."""
        self.rejected[reason] += 1
        if len(self.bad_rows) < self.max_bad_rows:
            self.bad_rows.append(BadRow(path, line, reason, detail))

    def summary(self) -> str:
        """Format the multi-line summary that ``eta1 load`` prints."""
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        copies = f" ({self.copies} copies each)" if self.copies > 1 else ""
        lines = [
            f"{self.rows:,} rows from {self.files} file(s){copies} into {self.index} "
            f"in {self.seconds:.1f} s ({rate:,.0f} rows/s)",
            f"  loaded:          {self.loaded:,}",
            f"  already present: {self.already_present:,}",
            f"  rejected:        {self.rejected_total:,}",
        ]
        for reason, count in self.rejected.most_common():
            lines.append(f"    {reason}: {count:,}")
        if self.repeated_headers:
            lines.append(f"  repeated header lines skipped: {self.repeated_headers:,}")
        if self.bad_rows:
            listed = len(self.bad_rows)
            lines.append(f"first {listed} rejected row(s):" if listed < self.rejected_total else "rejected rows:")
            lines.extend(f"  {row}" for row in self.bad_rows)
            if listed < self.rejected_total:
                lines.append(f"  ... and {self.rejected_total - listed:,} more")
        return "\n".join(lines)


# --- Loading -------------------------------------------------------------------


class Progress(Protocol):
    """Receiver of progress updates during a load."""

    def start(self, total_bytes: int) -> None:
        """Begin a load of total_bytes bytes (file sizes times copies)."""

    def update(self, rows: int, bytes_done: int) -> None:
        """Report rows processed so far and bytes read so far."""

    def finish(self) -> None:
        """End the load."""


class ProgressBar:
    """A one-line progress bar redrawn in place on a terminal, at most every 0.2 s."""

    def __init__(self, stream: TextIO, width: int = 30):
        self._stream = stream
        self._width = width
        self._total = 1
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._last_length = 0

    def start(self, total_bytes: int) -> None:
        self._total = max(total_bytes, 1)
        self._started = time.monotonic()

    def update(self, rows: int, bytes_done: int) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.2:
            return
        self._last_draw = now
        share = min(bytes_done / self._total, 1.0)
        filled = int(share * self._width)
        rate = rows / max(now - self._started, 1e-9)
        text = f"\r[{'#' * filled}{'.' * (self._width - filled)}] {share:4.0%}  {rows:,} rows  {rate:,.0f} rows/s"
        self._last_length = len(text)
        self._stream.write(text)
        self._stream.flush()

    def finish(self) -> None:
        if self._last_length:
            self._stream.write("\r" + " " * self._last_length + "\r")
            self._stream.flush()


def _api_reason(error: ApiError) -> str:
    """Return Elasticsearch's error type and reason from an ApiError."""
    body = error.body if isinstance(error.body, dict) else {}
    details = body.get("error")
    if isinstance(details, dict):
        return f"{details.get('type', error.message)}: {details.get('reason', '')}"
    return str(error.message)


def _mapped_type(properties: dict[str, Any], path: Sequence[str]) -> str | None:
    node: dict[str, Any] = {"properties": properties}
    for part in path:
        node = node.get("properties", {}).get(part, {})
    kind = node.get("type")
    return kind if isinstance(kind, str) else None


def check_index(es: Elasticsearch, index: str, time_path: Sequence[str]) -> None:
    """Create the index if it is missing, and warn when its mapping is not the flow template's.

    Raises LoadError when Elasticsearch rejects the index name.
    """
    try:
        es.indices.create(index=index)
        log.info("created index %s", index)
    except BadRequestError as error:
        if error.message != "resource_already_exists_exception":
            raise LoadError(
                f"index {index!r} cannot be created ({_api_reason(error)}); "
                "use a lowercase name without spaces or any of \\/*?\"<>|,#:"
            ) from None
    mapping = es.indices.get_mapping(index=index)
    expected = {(schema.SRC_IP,): "ip", (schema.DST_IP,): "ip", tuple(time_path): "date"}
    for details in mapping.body.values():
        properties = details.get("mappings", {}).get("properties", {})
        for path, kind in expected.items():
            actual = _mapped_type(properties, path)
            if actual != kind:
                log.warning(
                    "index %s maps %r as %s, not %s: it was created without the flow template "
                    "(or with another time field); delete the index and load again to get the flow types",
                    index, ".".join(path), actual or "nothing", kind,
                )


@dataclass(frozen=True)
class _InFlight:
    """A row sent to Elasticsearch whose bulk item result has not arrived yet."""

    path: str
    line: int
    action: dict[str, Any]


class _LoadState:
    """Counts and in-flight rows, shared by the thread that reads rows and the one that counts results.

    ``parallel_bulk`` pulls the actions from a pool thread, so every change
    goes through one lock.
    """

    def __init__(self, report: LoadReport):
        self.report = report
        self.retry: list[_InFlight] = []
        self._in_flight: dict[str, list[_InFlight]] = {}
        self._lock = threading.Lock()

    def reject(self, path: str, line: int, reason: str, detail: str) -> None:
        with self._lock:
            self.report.reject(path, line, reason, detail)

    def skip_header(self) -> None:
        with self._lock:
            self.report.repeated_headers += 1

    def send(self, doc_id: str, entry: _InFlight) -> None:
        with self._lock:
            self._in_flight.setdefault(doc_id, []).append(entry)

    def answer(self, ok: bool, item: dict[str, Any], *, may_retry: bool) -> None:
        """Count one bulk item result. With may_retry, a row rejected with 429 is kept for another attempt."""
        result = next(iter(item.values()))
        status = result.get("status")
        doc_id = result.get("_id", "")
        with self._lock:
            entry = None
            entries = self._in_flight.get(doc_id)
            if entries:
                entry = entries.pop(0)
                if not entries:
                    del self._in_flight[doc_id]
            if ok:
                self.report.loaded += 1
            elif status == 409:
                self.report.already_present += 1
            elif status == 429 and may_retry and entry is not None:
                self.retry.append(entry)
            else:
                kind, detail = _item_error(result)
                path, line = (entry.path, entry.line) if entry else ("(unknown file)", 0)
                self.report.reject(path, line, f"rejected by Elasticsearch: {kind}", detail)


def _item_error(result: dict[str, Any]) -> tuple[str, str]:
    """Return the error type and reason of a failed bulk item."""
    error = result.get("error")
    if isinstance(error, dict):
        reason = str(error.get("reason", ""))
        caused = (error.get("caused_by") or {}).get("reason")
        return str(error.get("type", "unknown error")), f"{reason} ({caused})" if caused else reason
    # The whole bulk request failed; the helper reports it on every item.
    return f"HTTP {result.get('status')}", str(error)


@dataclass
class _Position:
    """Bytes read so far, for the progress bar."""

    done_before: int = 0
    current: FlowFile | None = None

    def bytes_done(self) -> int:
        current = self.current
        try:
            return self.done_before + (current.bytes_read() if current else 0)
        except ValueError:  # the reader thread closed the file in between
            return self.done_before


def _bulk_actions(
    paths: Sequence[str],
    layouts: dict[str, RowLayout],
    index: str,
    *,
    time_path: Sequence[str],
    default_tz: tzinfo,
    shifts: Sequence[timedelta],
    state: _LoadState,
    position: _Position,
) -> Iterator[dict[str, Any]]:
    """Yield one bulk ``create`` action per good row, and count bad rows in the report."""
    for shift in shifts:
        shift_micros = shift // timedelta(microseconds=1)
        for path in paths:
            layout = layouts[path]
            with FlowFile(path) as flow_file:
                position.current = flow_file
                rows = iter_rows(flow_file)
                header = _header_names(next(rows).cells or [])
                log.debug("loading %s (shift %s)", path, shift)
                for row in rows:
                    if row.cells is None:
                        state.reject(path, row.line, INVALID_CSV, row.error)
                        continue
                    if row.cells[0].strip() == header[0] and _header_names(row.cells) == header:
                        state.skip_header()
                        continue
                    try:
                        document = row_to_document(
                            row.cells, layout, time_path=time_path, default_tz=default_tz, shift=shift
                        )
                    except RowError as error:
                        state.reject(path, row.line, error.reason, error.detail)
                        continue
                    doc_id = document_id(row.raw, shift_micros)
                    action = {"_op_type": "create", "_index": index, "_id": doc_id, "_source": document}
                    state.send(doc_id, _InFlight(path, row.line, action))
                    yield action
                position.current = None
                position.done_before += flow_file.size


def load_files(
    es: Elasticsearch,
    paths: Sequence[str],
    index: str,
    *,
    time_field: str = "@timestamp",
    default_tz: tzinfo = timezone.utc,
    batch_size: int = DEFAULT_BATCH_SIZE,
    threads: int = DEFAULT_THREADS,
    replicate: int = 1,
    replicate_step: timedelta = timedelta(seconds=DEFAULT_REPLICATE_STEP_SECONDS),
    refresh: bool = False,
    max_bad_rows: int = DEFAULT_MAX_BAD_ROWS,
    progress: Progress | None = None,
) -> LoadReport:
    """Load CICFlowMeter CSV files into ``index`` and return the counts.

    Every file's header is checked before any row is sent, so a missing file
    or one without a Timestamp column raises LoadError with nothing written.
    Bad rows are counted and skipped. ``threads`` bulk requests run at once.
    Rows that Elasticsearch rejects with 429 (too busy) are sent again at the
    end, with backoff. ``replicate`` loads each file that many times, copy k
    with its flow times shifted by k * ``replicate_step`` and its own ``_id``
    values. The index template is not installed here; see
    ``sidecar.flow_index.put_index_template``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if replicate < 1:
        raise ValueError(f"replicate must be at least 1, got {replicate}")
    if replicate > 1 and replicate_step <= timedelta(0):
        raise ValueError(f"replicate_step must be positive when replicate > 1, got {replicate_step}")
    try:
        time_path = flow_index.time_field_path(time_field)
    except ValueError as error:
        raise LoadError(str(error)) from None

    # 1. Check every file before writing anything.
    layouts = {path: read_layout(path, time_path) for path in dict.fromkeys(paths)}
    check_index(es, index, time_path)

    # 2. Send the rows: a pool thread reads and converts them, `threads` threads send the bulk requests.
    report = LoadReport(index=index, files=len(layouts), copies=replicate, max_bad_rows=max_bad_rows)
    state = _LoadState(report)
    position = _Position()
    shifts = [replicate_step * copy for copy in range(replicate)]
    if progress is not None:
        progress.start(sum(os.path.getsize(path) for path in layouts) * replicate)
    started = time.monotonic()
    actions = _bulk_actions(
        list(layouts), layouts, index, time_path=time_path, default_tz=default_tz,
        shifts=shifts, state=state, position=position,
    )
    try:
        results = parallel_bulk(
            es, actions, thread_count=threads, chunk_size=batch_size, queue_size=threads,
            raise_on_error=False, raise_on_exception=False,
        )
        for ok, item in results:
            state.answer(ok, item, may_retry=True)
            if progress is not None:
                progress.update(report.rows, position.bytes_done())

        # 3. Send the rows rejected with 429 again, one request at a time, with backoff.
        if state.retry:
            retry, state.retry = state.retry, []
            log.warning("Elasticsearch was too busy for %s rows (429); sending them again", len(retry))
            for entry in retry:
                state.send(entry.action["_id"], entry)
            results = streaming_bulk(
                es, [entry.action for entry in retry], chunk_size=batch_size, max_retries=5, initial_backoff=2,
                raise_on_error=False, raise_on_exception=False,
            )
            for ok, item in results:
                state.answer(ok, item, may_retry=False)
    finally:
        if progress is not None:
            progress.finish()

    # 4. Make the rows searchable now rather than at the next periodic refresh.
    if refresh:
        es.indices.refresh(index=index)
    report.seconds = time.monotonic() - started
    log.info(
        "loaded %s rows into %s (%s already present, %s rejected) in %.1f s",
        report.loaded, index, report.already_present, report.rejected_total, report.seconds,
    )
    return report


# --- Command line -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eta1 load`` options to a parser."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="CICFlowMeter CSV file, plain or gzip-compressed (detected from its content)")

    # Where the rows go.
    parser.add_argument("--index", required=True, metavar="NAME",
                        help="flow index to load into, created if missing; unless --no-template is given, "
                             "it must match source.index (default cic_*) so that the flow template applies")
    parser.add_argument("--config", metavar="PATH", help="ETA1 configuration file (YAML, or the old service's INI)")
    parser.add_argument("--es-url", metavar="URL", help="Elasticsearch URL such as http://127.0.0.1:9200; overrides cluster.hosts")

    # How rows become documents.
    parser.add_argument("--timezone", default="UTC", metavar="OFFSET",
                        help="UTC offset of Timestamp values that carry none, such as +08:00 (default: UTC); "
                             "stamps with an offset and epoch numbers ignore it")
    parser.add_argument("--time-field", metavar="FIELD",
                        help="document field for the parsed flow time, dotted for an object path such as "
                             "event.ingested (default: source.time_field, @timestamp)")

    # How they are sent.
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"documents per bulk request (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                        help=f"bulk requests sent at the same time (default: {DEFAULT_THREADS})")

    # Copies for benchmarks.
    parser.add_argument("--replicate", type=int, default=1, metavar="N",
                        help="load each file N times, each copy with shifted flow times and its own ids (default: 1)")
    parser.add_argument("--replicate-step-seconds", type=float, default=DEFAULT_REPLICATE_STEP_SECONDS,
                        metavar="SECONDS",
                        help="seconds added to the flow time of each further copy "
                             f"(default: {DEFAULT_REPLICATE_STEP_SECONDS}, one week)")

    # Index handling and reporting.
    parser.add_argument("--refresh", action="store_true",
                        help="refresh the index at the end, so the rows are searchable at once")
    parser.add_argument("--no-template", action="store_true",
                        help="do not install or update the flow index template (eta1-flows); "
                             "fields of a new index then get dynamic mappings")
    parser.add_argument("--show-rejected", type=int, default=DEFAULT_MAX_BAD_ROWS, metavar="N",
                        help=f"rejected rows to list with file:line (default: {DEFAULT_MAX_BAD_ROWS}); "
                             "the rest are counted")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``eta1 load``."""
    parser = argparse.ArgumentParser(
        prog="eta1 load",
        description="Bulk-load CICFlowMeter CSV files into an Elasticsearch flow index.",
        epilog=(
            "Infinity, NaN and empty numeric cells are written as null, which ETA1 reads as a missing value. "
            "Each document's _id is a hash of its CSV row, so loading a file again adds no duplicates: "
            "rows already in the index are counted as 'already present' and left unchanged. "
            "Exit status: 0 all rows loaded or already present, 1 some rows rejected (the rest loaded), "
            "2 usage, file or connection error."
        ),
    )
    add_arguments(parser)
    return parser


def _check_arguments(args: argparse.Namespace, source_index: str, time_field: str) -> tuple[tzinfo, list[str]]:
    """Validate the options and every file's header before any connection. Returns the time zone and index patterns."""
    default_tz = parse_offset(args.timezone, key="--timezone")
    if args.batch_size < 1:
        raise LoadError(f"--batch-size {args.batch_size}: use 1 or more documents per request")
    if args.threads < 1:
        raise LoadError(f"--threads {args.threads}: use 1 or more concurrent requests")
    if args.replicate < 1:
        raise LoadError(f"--replicate {args.replicate}: use 1 or more copies")
    if args.replicate > 1 and args.replicate_step_seconds <= 0:
        raise LoadError(f"--replicate-step-seconds {args.replicate_step_seconds:g}: use a positive number of seconds")
    try:
        time_path = flow_index.time_field_path(time_field)
    except ValueError as error:
        raise LoadError(str(error)) from None

    for path in dict.fromkeys(args.files):
        read_layout(path, time_path)

    patterns = flow_index.split_patterns(source_index)
    if not args.no_template and not any(fnmatch.fnmatchcase(args.index, pattern) for pattern in patterns):
        raise LoadError(
            f"index {args.index!r} does not match source.index {source_index!r}, so the flow template "
            "would not apply; name the index to match, set source.index, or pass --no-template"
        )
    return default_tz, patterns


def run(args: argparse.Namespace) -> int:
    """Run ``eta1 load`` with parsed arguments and return the exit status."""
    from sidecar.esclient import make_client
    from sidecar.logsetup import MASK, setup_logging

    config = load_config(args.config)
    setup_logging("INFO", config.secrets())
    cluster = config.cluster
    if args.es_url:
        cluster = dataclasses.replace(cluster, hosts=(args.es_url,))
    time_field = args.time_field or config.source.time_field
    default_tz, patterns = _check_arguments(args, config.source.index, time_field)

    es = make_client(cluster, retries=3)
    hosts = MASK.mask(", ".join(cluster.hosts))
    try:
        try:
            es.cluster.health()
        except TransportError as error:
            raise LoadError(f"cannot reach Elasticsearch at {hosts} ({error}); start it or pass --es-url") from None
        except ApiError as error:
            raise LoadError(
                f"Elasticsearch at {hosts} rejected the health check ({_api_reason(error)}); "
                "check the cluster credentials in the configuration"
            ) from None
        if not args.no_template:
            flow_index.put_index_template(es, patterns, time_field=time_field)
        report = load_files(
            es, args.files, args.index,
            time_field=time_field,
            default_tz=default_tz,
            batch_size=args.batch_size,
            threads=args.threads,
            replicate=args.replicate,
            replicate_step=timedelta(seconds=args.replicate_step_seconds),
            refresh=args.refresh,
            max_bad_rows=args.show_rejected,
            progress=ProgressBar(sys.stderr) if sys.stderr.isatty() else None,
        )
    except (ApiError, TransportError) as error:
        raise LoadError(
            f"Elasticsearch at {hosts} failed: {error}; rows sent before the failure stay in the index, "
            "and loading again adds only the missing ones"
        ) from None
    finally:
        es.close()

    print(report.summary())
    return 1 if report.rejected_total else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``eta1 load``: return 0 when every row loaded, 1 when some were rejected, 2 on errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SidecarError as error:
        print(f"eta1 load: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eta1 load: interrupted; rows sent so far stay in the index, and loading again adds only "
              "the missing ones", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
