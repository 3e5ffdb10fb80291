"""Configuration: YAML, environment overrides, the old INI file, and errors that name the key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sidecar.config import load_config
from sidecar.errors import ConfigError


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_without_file():
    config = load_config(None, environ={})
    assert config.cluster.hosts == ("http://127.0.0.1:9200",)
    assert config.source.index == "cic_*"
    assert config.source.time_field == "@timestamp"
    assert config.alerts.tzinfo().utcoffset(None) == timedelta(hours=8)
    assert config.cluster.verify_certs is True


def test_yaml_values_and_env_override(tmp_path):
    path = write(tmp_path, "eta1.yaml", "cluster:\n  hosts: [https://es1:9200, https://es2:9200]\n  username: eta1\n"
                 "  password: from-file\nbatch_size: 500\nsource:\n  index: flows-*\n")
    config = load_config(path, environ={"ETA1_CLUSTER__PASSWORD": "from-env", "ETA1_BATCH_SIZE": "250"})
    assert config.cluster.hosts == ("https://es1:9200", "https://es2:9200")
    assert config.cluster.password == "from-env"
    assert config.batch_size == 250
    assert config.source.index == "flows-*"


def test_env_list_is_comma_separated():
    config = load_config(None, environ={"ETA1_CLUSTER__HOSTS": "https://a:9200, https://b:9200"})
    assert config.cluster.hosts == ("https://a:9200", "https://b:9200")


def test_old_ini_file(tmp_path):
    path = write(tmp_path, "eta.ini", "[ES]\nes_server = 127.0.0.1\nes_port = 9201\n")
    config = load_config(path, environ={})
    assert config.cluster.hosts == ("http://127.0.0.1:9201",)
    assert config.api.enabled is True


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("batch_size: many\n", "batch_size: expected an integer, got 'many'"),
        ("batch_size: 50000\n", "batch_size: 50000 is out of range"),
        ("source:\n  indx: cic_*\n", "unknown key 'source.indx'"),
        ("colour: blue\n", "unknown key 'colour'"),
        ("alerts:\n  timezone: Mars/Olympus\n", "alerts.timezone: invalid timezone 'Mars/Olympus'"),
        ("cluster:\n  hosts: [127.0.0.1:9200]\n", "cluster.hosts: invalid URL"),
        ("cluster:\n  username: u\n", "cluster.password is missing"),
        ("cluster:\n  verify_certs: maybe\n", "cluster.verify_certs: invalid boolean"),
        ("source: [1, 2]\n", "source: expected a mapping"),
        ("source:\n  start: yesterday\n", "source.start: invalid time"),
    ],
)
def test_invalid_key_named(tmp_path, text, match):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=match) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(path)


def test_unknown_keys_all_named(tmp_path):
    path = write(tmp_path, "bad.yaml", "colour: blue\nsource:\n  indx: cic_*\n  index: x\n  tyme_field: t\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert "unknown keys 'colour', 'source.indx', 'source.tyme_field'" in message
    assert "known top-level keys: " in message
    assert "known keys in source: " in message
    assert "time_field" in message.split("known keys in source: ")[1]


def test_unknown_env_key_names_variable():
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"ETA1_CLUSTER__PASWORD": "secret-value", "ETA1_SOURCE__INDEX": "flows-*"})
    message = str(caught.value)
    assert "unknown key 'cluster.pasword' (from environment variable ETA1_CLUSTER__PASWORD)" in message
    assert "secret-value" not in message


def test_bad_env_value_names_variable(tmp_path):
    path = write(tmp_path, "eta1.yaml", "batch_size: 100\n")
    with pytest.raises(ConfigError, match=r"batch_size: expected an integer, got 'lots' \(from environment variable ETA1_BATCH_SIZE\)"):
        load_config(path, environ={"ETA1_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match=r"b\.yaml: batch_size: expected an integer, got 'lots'$"):
        load_config(write(tmp_path, "b.yaml", "batch_size: lots\n"), environ={})


def test_bad_values_all_named(tmp_path):
    path = write(tmp_path, "bad.yaml", "batch_size: lots\nmodel_threads: x\ncolour: blue\ncluster:\n  verify_certs: maybe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"ETA1_POLL_INTERVAL_SECONDS": "soon"})
    message = str(caught.value)
    assert message.startswith(f"{path}: 5 problems: unknown key 'colour'")
    for part in ("batch_size: expected an integer, got 'lots'", "model_threads: expected an integer, got 'x'",
                 "cluster.verify_certs: invalid boolean", "poll_interval_seconds: expected a number, got 'soon' (from environment variable ETA1_POLL_INTERVAL_SECONDS)"):
        assert part in message


@pytest.mark.parametrize("value", ["[s3cr3t-list]", "{a: s3cr3t-map}", "true"])
def test_password_non_string_hidden(tmp_path, value):
    path = write(tmp_path, "eta1.yaml", f"cluster:\n  username: u\n  password: {value}\n")
    with pytest.raises(ConfigError, match=r"cluster\.password: expected a string, got a value of type (list|dict|bool)") as caught:
        load_config(path, environ={})
    assert "s3cr3t" not in str(caught.value)


def test_env_three_parts_rejected():
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ={"ETA1_CLUSTER__PASSWORD__X": "zz", "ETA1_BATCH_SIZE": "abc"})
    message = str(caught.value)
    assert "ETA1_CLUSTER__PASSWORD__X: too many '__' separators" in message
    assert "batch_size: expected an integer, got 'abc' (from environment variable ETA1_BATCH_SIZE)" in message


def test_range_checks_name_env_variable(tmp_path):
    path = write(tmp_path, "eta1.yaml", "api:\n  port: 70000\nalerts:\n  timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"ETA1_BATCH_SIZE": "0"})
    message = str(caught.value)
    assert message.startswith(f"{path}: 3 problems: ")
    assert "batch_size: 0 is out of range; use 1 to 10000" in message
    assert "(from environment variable ETA1_BATCH_SIZE)" in message
    assert "api.port: 70000 is not a TCP port" in message
    assert "alerts.timezone: invalid timezone 'Mars/Olympus'" in message


@pytest.mark.parametrize("value", ["0777", "12:30:00", "1.50"])
def test_password_number_rejected(tmp_path, value):
    path = write(tmp_path, "eta1.yaml", f"cluster:\n  username: u\n  password: {value}\n")
    with pytest.raises(ConfigError, match=r"cluster\.password: expected a string, got a value of type (int|float); put the value in quotes"):
        load_config(path, environ={})
    quoted = write(tmp_path, "quoted.yaml", f"cluster:\n  username: u\n  password: '{value}'\n")
    assert load_config(quoted, environ={}).cluster.password == value


@pytest.mark.parametrize(
    "text",
    ["cluster: http://u:hunter2-secret@h:9200\n", "cluster:\n  hosts: {a: http://u:hunter2-secret@h:9200}\n"],
)
def test_cluster_values_not_echoed(tmp_path, text):
    path = write(tmp_path, "eta1.yaml", text)
    with pytest.raises(ConfigError, match=r"got a value of type (str|dict)") as caught:
        load_config(path, environ={})
    assert "hunter2" not in str(caught.value)


def test_empty_value_named(tmp_path):
    path = write(tmp_path, "eta1.yaml", "batch_size:\n")
    with pytest.raises(ConfigError, match=r"batch_size: missing value; set one, or remove the key to keep the default 1000"):
        load_config(path, environ={})


def test_ini_problems_listed(tmp_path):
    path = write(tmp_path, "eta.ini", "[ES]\nes_server =\nes_port = 99999\nes_tls = maybe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert message.startswith(f"{path}: 3 problems: [ES] es_server: empty")
    assert "[ES] es_port: expected a port number from 1 to 65535, got '99999'" in message
    assert "[ES] es_tls: invalid boolean 'maybe'" in message
    secure = write(tmp_path, "tls.ini", "[ES]\nes_server = es.example\nes_port = 9243\nes_tls = yes\n")
    assert load_config(secure, environ={}).cluster.hosts == ("https://es.example:9243",)


@pytest.mark.parametrize("name", ["eta1.yaml", "eta.ini"])
def test_file_not_utf8(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"batch_size: 5\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(first bad byte at offset 19\); save the file as UTF-8"):
        load_config(str(path), environ={})


def test_bad_yaml_has_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "cluster:\n  hosts: [a\nbatch_size: 1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        load_config(path, environ={})


def test_iana_zone_accepted(tmp_path):
    path = write(tmp_path, "eta1.yaml", "alerts:\n  timezone: Asia/Shanghai\n")
    zone = load_config(path, environ={}).alerts.tzinfo()
    assert str(zone) == "Asia/Shanghai"


def test_password_not_in_repr(tmp_path):
    path = write(tmp_path, "eta1.yaml", "cluster:\n  username: u\n  password: hunter2-secret\n")
    config = load_config(path, environ={})
    assert "hunter2-secret" not in repr(config)


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(str(tmp_path / "nope.yaml"), environ={})
