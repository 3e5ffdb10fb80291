"""Configuration: a YAML file, single keys overridden by environment variables, or the old INI file.

Every key has a default, so an empty file (or no file) configures a local
daemon against http://127.0.0.1:9200. Validation happens here, at start-up,
and each error names the key, the value and what is accepted.

Environment overrides: ``ETA1_<SECTION>__<KEY>`` sets one key, for example
``ETA1_CLUSTER__PASSWORD=...`` or ``ETA1_SOURCE__INDEX=flows-*``. List values
(``cluster.hosts``) take a comma-separated string.
"""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field, fields
from datetime import timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import yaml

from sidecar.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "ETA1_"
# The password part of http://user:password@host in a cluster URL.
_URL_PASSWORD = re.compile(r"//[^/@:\s]*:([^/@\s]+)@")


@dataclass(frozen=True)
class ClusterConfig:
    """How to reach Elasticsearch."""

    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    ca_certs: str | None = None
    verify_certs: bool = True
    request_timeout: float = 30.0

    def secrets(self) -> list[str]:
        """Return the configured secrets, for masking in logs: password, API key, and passwords in host URLs."""
        in_urls = [match.group(1) for host in self.hosts for match in [_URL_PASSWORD.search(host)] if match]
        return [value for value in (self.password, self.api_key, *in_urls) if value]

    def __repr__(self) -> str:
        # Host URLs may carry user:password@; password and api_key are left out of the repr.
        return (
            f"ClusterConfig(hosts={tuple(_redact_url(host) for host in self.hosts)!r}, username={self.username!r}, "
            f"ca_certs={self.ca_certs!r}, verify_certs={self.verify_certs!r}, request_timeout={self.request_timeout!r})"
        )


@dataclass(frozen=True)
class SourceConfig:
    """Flow documents to read, and their order."""

    index: str = "cic_*"
    # Field the cursor follows. "@timestamp" is the flow's own time; an ingest
    # time such as ECS "event.ingested" removes the late-arrival problem.
    time_field: str = "@timestamp"
    # Time field copied into the alert's log_time when it differs from time_field.
    flow_time_field: str | None = None
    # Optional secondary sort key (a keyword or numeric field). It need not be
    # unique, because the checkpoint keeps the _ids read at the last time value.
    tiebreaker: str | None = None
    # Flows newer than now - lag are left for a later poll, so late writers can catch up.
    lag_seconds: float = 60.0
    # Where a daemon with no checkpoint starts: "earliest" or an ISO-8601 time.
    start: str = "earliest"


@dataclass(frozen=True)
class AlertConfig:
    """Alert index and the timezone of alert timestamps."""

    # strftime pattern applied to the flow's time in UTC, so a replayed flow
    # always lands in the same index under the same id.
    index: str = "eta1-alerts-%Y.%m.%d"
    timezone: str = "+08:00"
    template_name: str = "eta1-alerts"

    def tzinfo(self) -> tzinfo:
        """Return the configured local timezone: a fixed offset or an IANA zone (daylight saving applies)."""
        return parse_zone(self.timezone, key="alerts.timezone")


@dataclass(frozen=True)
class StateConfig:
    """Checkpoint location and lease."""

    index: str = "eta1-state"
    # Name of this daemon's checkpoint; two daemons with one name share a cursor.
    name: str = "default"
    # A daemon that stops renewing its lease for this long is presumed dead.
    lease_seconds: float = 60.0


@dataclass(frozen=True)
class ApiConfig:
    """The on-demand HTTP API."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 5000
    # Maximum window one request may scan, in seconds.
    max_window_seconds: float = 86400.0
    # Index pattern(s) the API may read, comma-separated; empty means source.index.
    allowed_indices: str = ""
    # Alert documents returned in one response; the counts cover all of them.
    max_alerts_returned: int = 1000


@dataclass(frozen=True)
class Config:
    """The whole daemon configuration."""

    cluster: ClusterConfig = ClusterConfig()
    source: SourceConfig = SourceConfig()
    alerts: AlertConfig = AlertConfig()
    state: StateConfig = StateConfig()
    api: ApiConfig = ApiConfig()
    model: str = "models/eta1.onnx"
    rules: str = "rules.yaml"
    batch_size: int = 1000
    # onnxruntime intra-op threads per model; 0 means one per core. One thread
    # ran the daemon 1.5x faster on 2 cores beside Elasticsearch (bench/RESULTS.md).
    model_threads: int = 1
    poll_interval_seconds: float = 10.0
    path: str | None = None

    def resolve(self, relative: str) -> Path:
        """Resolve a configured path: absolute as is, else against the config file's folder or the repo."""
        candidate = Path(relative)
        if candidate.is_absolute():
            return candidate
        if self.path is not None:
            beside = Path(self.path).resolve().parent / candidate
            if beside.exists():
                return beside
        if candidate.exists():
            return candidate.resolve()
        return REPO_ROOT / candidate

    def secrets(self) -> list[str]:
        """Return the configured secrets, for masking in logs."""
        return self.cluster.secrets()


_SECTIONS: dict[str, type] = {
    "cluster": ClusterConfig,
    "source": SourceConfig,
    "alerts": AlertConfig,
    "state": StateConfig,
    "api": ApiConfig,
}

_OFFSET = re.compile(r"^(?:Z|UTC|[+-]\d{2}:?\d{2})$")


def parse_zone(text: str, *, key: str) -> tzinfo:
    """Parse a fixed offset (``+08:00``, ``Z``) or an IANA zone name (``Asia/Shanghai``)."""
    text = str(text).strip()
    if _OFFSET.match(text):
        return parse_offset(text, key=key)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{key}: invalid timezone {text!r}; use a fixed offset such as '+08:00' or 'Z', "
            "or an IANA zone name such as 'Asia/Shanghai'"
        ) from None


def parse_offset(text: str, *, key: str) -> timezone:
    """Parse a fixed UTC offset such as ``+08:00``, ``-0500`` or ``Z``."""
    text = str(text).strip()
    if not _OFFSET.match(text):
        raise ConfigError(f"{key}: invalid timezone {text!r}; use a fixed offset such as '+08:00', '-05:00' or 'Z'")
    if text in ("Z", "UTC"):
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 23 or minutes > 59:
        raise ConfigError(f"{key}: invalid timezone {text!r}; hours must be 00-23 and minutes 00-59")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _shown(key: str, value: Any) -> str:
    """Return a value for an error message, or only its type under cluster, whose values may contain credentials."""
    return f"a value of type {type(value).__name__}" if key.split(".")[0] == "cluster" else repr(value)


def _coerce(key: str, value: Any, expected: Any) -> Any:
    """Convert a YAML or environment value to the type of the field's default."""
    kind = type(expected)
    if value is None and expected is not None:
        raise ConfigError(f"{key}: missing value; set one, or remove the key to keep the default {expected!r}")
    if expected is None or value is None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            # The value is not shown because it may be the password or the API key. YAML reads
            # 0777 or 12:30:00 as numbers, which str() would silently change.
            raise ConfigError(f"{key}: expected a string, got a value of type {type(value).__name__}; put the value in quotes")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "1", "on"):
            return True
        if text in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}: invalid boolean {_shown(key, value)}; use true or false")
    if kind is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(f"{key}: expected a list or a comma-separated string, got {_shown(key, value)}")
        return tuple(str(item).strip() for item in items if str(item).strip())
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {_shown(key, value)}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got {_shown(key, value)}") from None
        if number < 0:
            raise ConfigError(f"{key}: must not be negative, got {_shown(key, value)}")
        return number
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key}: expected a string, got {_shown(key, value)}")
    return str(value)


def _coerce_from(key: str, value: Any, expected: Any, origins: dict[str, str]) -> Any:
    """Coerce one value; an error names the environment variable the value came from, if any."""
    try:
        return _coerce(key, value, expected)
    except ConfigError as error:
        raise ConfigError(_with_origin(error.message, key, origins)) from None


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Return the overrides as nested keys, the variable each dotted key came from, and naming problems."""
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    nested_too_deep = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("ETA1_ES_URL", "ETA1_DATA_DIR"):
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if len(parts) == 1:
            data[parts[0]] = value
        elif len(parts) == 2:
            data.setdefault(parts[0], {})[parts[1]] = value
        else:
            nested_too_deep.append(name)
            continue
        origins[".".join(parts)] = name
    problems = []
    if nested_too_deep:
        problems.append(
            f"environment variable{'s' if len(nested_too_deep) > 1 else ''} {', '.join(sorted(nested_too_deep))}: "
            "too many '__' separators; use ETA1_<KEY> or ETA1_<SECTION>__<KEY>, e.g. ETA1_CLUSTER__PASSWORD"
        )
    return data, origins, problems


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _unknown_keys(data: dict[str, Any], origins: dict[str, str]) -> str:
    """Return a message naming every unknown key and the keys its level allows, or "" if all are known."""
    top = sorted(f.name for f in fields(Config) if f.name != "path")
    unknown: dict[str, list[str]] = {}
    for key, value in data.items():
        if key not in top:
            unknown.setdefault("", []).append(key)
        elif key in _SECTIONS and isinstance(value, dict):
            known = {f.name for f in fields(_SECTIONS[key])}
            for name in value:
                if name not in known:
                    unknown.setdefault(key, []).append(f"{key}.{name}")
    if not unknown:
        return ""

    def described(key: str) -> str:
        return f"'{key}' (from environment variable {origins[key]})" if key in origins else f"'{key}'"

    keys = [described(key) for level in unknown.values() for key in level]
    hints = [
        f"known keys in {level}: {', '.join(sorted(f.name for f in fields(_SECTIONS[level])))}"
        if level
        else f"known top-level keys: {', '.join(top)}"
        for level in unknown
    ]
    return f"unknown key{'s' if len(keys) > 1 else ''} {', '.join(keys)}; {'; '.join(hints)}"


def from_dict(
    data: dict[str, Any],
    *,
    path: str | None = None,
    origins: dict[str, str] | None = None,
    env_problems: Sequence[str] = (),
) -> Config:
    """Build and validate a Config from parsed YAML (plus overrides); report every problem in one error.

    ``origins`` maps dotted keys to the environment variables that set them,
    so that errors in those values name the variable rather than the file.
    ``env_problems`` are problems found in the variables' names.
    """
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of keys to values", path=path)
    origins = origins or {}
    problems = list(env_problems)
    unknown = _unknown_keys(data, origins)
    if unknown:
        problems.append(unknown)
    top = {f.name for f in fields(Config)} - {"path"}
    kwargs: dict[str, Any] = {"path": path}
    defaults = Config()
    for key, value in data.items():
        if key not in top:
            continue
        if key not in _SECTIONS:
            try:
                kwargs[key] = _coerce_from(key, value, getattr(defaults, key), origins)
            except ConfigError as error:
                problems.append(error.message)
            continue
        if not isinstance(value, dict):
            problems.append(_with_origin(f"{key}: expected a mapping of keys, got {_shown(key, value)}", key, origins))
            continue
        known = {f.name: f for f in fields(_SECTIONS[key])}
        section_defaults = _SECTIONS[key]()
        values = {}
        for name, item in value.items():
            if name not in known:
                continue
            try:
                values[name] = _coerce_from(f"{key}.{name}", item, getattr(section_defaults, name), origins)
            except ConfigError as error:
                problems.append(error.message)
        kwargs[key] = _SECTIONS[key](**values)
    if not problems:
        config = Config(**kwargs)
        problems = [_with_origin(message, key, origins) for key, message in _problems(config)]
    if problems:
        raise _combined(problems, path)
    return config


def _combined(problems: Sequence[str], path: str | None) -> ConfigError:
    """Return one error that lists every problem."""
    if len(problems) == 1:
        return ConfigError(problems[0], path=path)
    return ConfigError(f"{len(problems)} problems: " + "; ".join(problems), path=path)


def _with_origin(message: str, key: str, origins: dict[str, str]) -> str:
    return f"{message} (from environment variable {origins[key]})" if key in origins else message


def _problems(config: Config) -> list[tuple[str, str]]:
    """Return (key, message) for every value that is well typed but not usable."""
    problems: list[tuple[str, str]] = []
    if config.batch_size < 1 or config.batch_size > 10000:
        problems.append(("batch_size", f"batch_size: {config.batch_size} is out of range; use 1 to 10000 "
                         "(Elasticsearch's default result window)"))
    if not config.cluster.hosts:
        problems.append(("cluster.hosts", "cluster.hosts: at least one URL is required, e.g. https://127.0.0.1:9200"))
    for host in config.cluster.hosts:
        if not re.match(r"^https?://[^/\s]+(/.*)?$", host):
            problems.append(("cluster.hosts", f"cluster.hosts: invalid URL {_redact_url(host)!r}; "
                             "use http://HOST:PORT or https://HOST:PORT"))
    if config.cluster.ca_certs and not os.path.isfile(config.cluster.ca_certs):
        problems.append(("cluster.ca_certs", f"cluster.ca_certs: file not found: {config.cluster.ca_certs}; "
                         "give the path of the CA certificate (PEM)"))
    if config.cluster.api_key and config.cluster.username:
        problems.append(("cluster.api_key", "cluster: set either api_key or username/password, not both"))
    if config.cluster.username and not config.cluster.password:
        problems.append(("cluster.username", "cluster.password is missing for cluster.username; "
                         "set it in the file or in ETA1_CLUSTER__PASSWORD"))
    try:
        config.alerts.tzinfo()
    except ConfigError as error:
        problems.append(("alerts.timezone", error.message))
    if "%" not in config.alerts.index and "{" in config.alerts.index:
        problems.append(("alerts.index", f"alerts.index: {config.alerts.index!r} uses braces; "
                         "use strftime codes such as eta1-alerts-%Y.%m.%d"))
    if not 1 <= config.api.port <= 65535:
        problems.append(("api.port", f"api.port: {config.api.port} is not a TCP port; use 1-65535"))
    if config.source.start != "earliest":
        from sidecar.timeutil import parse_time

        try:
            parse_time(config.source.start)
        except ValueError as error:
            problems.append(("source.start", f"source.start: {error}; use 'earliest' or an ISO-8601 time"))
    return problems


def _redact_url(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def load_ini(path: str) -> dict[str, Any]:
    """Read the old service's INI file (``[ES] es_server``, ``es_port``, ``es_tls``) into config keys."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(_read_text(path), source=path)
    except configparser.Error as error:
        raise ConfigError(f"invalid INI file: {error}", path=path) from None
    if not parser.has_section("ES"):
        raise ConfigError("the INI file has no [ES] section; the old service's file has es_server and es_port there", path=path)
    problems = []
    server = parser.get("ES", "es_server", fallback="127.0.0.1").strip()
    if "://" in server:
        problems.append(
            f"[ES] es_server: expected a host name or address, got the URL {_redact_url(server)!r}; "
            "put the port in es_port, or use a YAML config with cluster.hosts"
        )
    elif not server:
        problems.append("[ES] es_server: empty; give the Elasticsearch host name or address")
    port = parser.get("ES", "es_port", fallback="9201").strip()
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        problems.append(f"[ES] es_port: expected a port number from 1 to 65535, got {port!r}")
    try:
        tls = parser.getboolean("ES", "es_tls", fallback=False)
    except ValueError:
        problems.append(f"[ES] es_tls: invalid boolean {parser.get('ES', 'es_tls')!r}; use true or false")
        tls = False
    if problems:
        raise _combined(problems, path)
    scheme = "https" if tls else "http"
    return {"cluster": {"hosts": [f"{scheme}://{server}:{port}"]}, "api": {"enabled": True}}


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise ConfigError(f"not UTF-8 text (first bad byte at offset {error.start}); save the file as UTF-8", path=path) from None
    except OSError as error:
        raise ConfigError(f"failed to read the file: {error.strerror}; check the path and its permissions", path=path) from None


def load_config(path: str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load the YAML (or old INI) file at path, apply environment overrides, and validate."""
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError("configuration file not found; pass an existing file to --config", path=path)
        if path.endswith((".ini", ".cfg", ".conf")):
            data = load_ini(path)
        else:
            text = _read_text(path)
            try:
                data = yaml.safe_load(text) or {}
            except yaml.YAMLError as error:
                line = getattr(getattr(error, "problem_mark", None), "line", None)
                raise ConfigError(f"invalid YAML: {getattr(error, 'problem', error)}", path=path,
                                  line=None if line is None else line + 1) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"the top level must be a mapping of keys (cluster:, source:, ...), got a {type(data).__name__}; "
            "see eta1.example.yaml",
            path=path,
        )
    overrides, origins, env_problems = _env_overrides(environ)
    return from_dict(_merge(data, overrides), path=path, origins=origins, env_problems=env_problems)
