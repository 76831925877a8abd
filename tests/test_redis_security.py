"""Redis AUTH and TLS for the alert publisher and ``vigil alerts``, against real redis-server processes."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from servers import LOCALHOST, RedisServer

from pipeline.alerts import AlertPublisher, alert_message
from pipeline.cli import alerts_client, build_parser
from pipeline.config import RedisConfig, VigilConfig, parse_config
from pipeline.daemon import redis_from_config
from pipeline.errors import ConfigError
from pipeline.records import Event
from pipeline.spool import Spool

# Distinctive, so that a search of the log text cannot match anything else.
PASSWORD = "vigil-test-pw-7f3a"
WRONG_PASSWORD = "vigil-wrong-pw-91c2"


@pytest.fixture
def auth_server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD) as server:
        yield server


@pytest.fixture
def tls_server() -> Iterator[RedisServer]:
    with RedisServer(password=PASSWORD, tls=True) as server:
        yield server


@pytest.fixture
def mutual_tls_server() -> Iterator[RedisServer]:
    with RedisServer(tls=True, tls_auth_clients="yes") as server:
        yield server


def make_config(redis_section: dict[str, Any], env: dict[str, str] | None = None) -> VigilConfig:
    data = {"cameras": {"gate": {"url": "rtsp://127.0.0.1:8554/gate"}}, "redis": redis_section}
    return parse_config(data, env=env or {})


def make_message(event_id: str) -> dict[str, Any]:
    event = Event(
        id=event_id,
        camera="gate",
        rule="dock-intrusion",
        rule_type="zone_intrusion",
        label="person",
        severity="warning",
        state="started",
        started_at=1_796_212_800.0,
        ended_at=None,
        track_ids=(7,),
        zone="dock",
        scores={"confidence": 0.8},
    )
    return alert_message(event)


def verified_client(server: RedisServer) -> redis.Redis:
    """Return a client with the server's own password and CA, for reading what arrived."""
    options: dict[str, Any] = {"socket_timeout": 5}
    if server.tls:
        options["ssl_ca_certs"] = str(server.ca_file)
        options["ssl_certfile"] = str(server.client_cert_file)
        options["ssl_keyfile"] = str(server.client_key_file)
    return redis.Redis.from_url(server.url, **options)


def publish_one(client: redis.Redis, reader: redis.Redis, event_id: str) -> tuple[list[str], list[str]]:
    """Publish one alert through AlertPublisher; return the event ids seen on the channel and in the stream."""
    pubsub = reader.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("vigil:alerts:*")
    publisher = AlertPublisher(RedisConfig(), client)
    publisher.start()
    publisher.submit(make_message(event_id))
    assert publisher.close(5), "the publisher did not deliver within 5 s"

    on_channel = []
    deadline = time.monotonic() + 5
    while not on_channel and time.monotonic() < deadline:
        item = pubsub.get_message(timeout=0.5)
        if item:
            on_channel.append(json.loads(item["data"])["event_id"])
    pubsub.close()
    in_stream = [json.loads(fields[b"alert"])["event_id"] for _id, fields in reader.xrange("vigil:events")]
    return on_channel, in_stream


def publish_failing(client: redis.Redis) -> AlertPublisher:
    """Submit one alert to a publisher whose client cannot get through; return it after its first failure."""
    failed = threading.Event()
    publisher = AlertPublisher(RedisConfig(), client, on_failure=failed.set)
    publisher.start()
    publisher.submit(make_message("rejected"))
    assert failed.wait(5), "the publisher reported no failure within 5 s"
    return publisher


# AUTH


def test_auth_url_password_delivers(auth_server: RedisServer) -> None:
    url = f"redis://:${{REDIS_PASSWORD}}@{LOCALHOST}:{auth_server.port}/0"
    config = make_config({"url": url}, env={"REDIS_PASSWORD": PASSWORD})
    on_channel, in_stream = publish_one(redis_from_config(config), verified_client(auth_server), "a1")
    assert on_channel == ["a1"]
    assert in_stream == ["a1"]


def test_auth_password_key_delivers(auth_server: RedisServer) -> None:
    config = make_config(
        {"url": auth_server.url_for(password=None), "password": "${REDIS_PASSWORD}"},
        env={"REDIS_PASSWORD": PASSWORD},
    )
    on_channel, in_stream = publish_one(redis_from_config(config), verified_client(auth_server), "a2")
    assert on_channel == ["a2"]
    assert in_stream == ["a2"]


def test_auth_wrong_password_never_delivers(
    auth_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config({"url": auth_server.url_for(password=WRONG_PASSWORD)})
    publisher = publish_failing(redis_from_config(config))
    assert not publisher.close(2)
    assert publisher.published == 0
    assert verified_client(auth_server).xlen("vigil:events") == 0
    assert "Redis rejected the connection" in caplog.text
    assert "invalid username-password pair" in caplog.text
    assert WRONG_PASSWORD not in caplog.text
    assert PASSWORD not in caplog.text


def test_wrong_password_reported_before_any_alert(
    auth_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config({"url": auth_server.url_for(password=WRONG_PASSWORD)})
    publisher = AlertPublisher(RedisConfig(), redis_from_config(config))
    publisher.start()
    deadline = time.monotonic() + 10
    while "Redis rejected the connection" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    publisher.close(1)
    assert "Redis rejected the connection" in caplog.text, "nothing logged until the first alert"
    assert WRONG_PASSWORD not in caplog.text


def test_auth_missing_password_rejected(auth_server: RedisServer) -> None:
    client = redis_from_config(make_config({"url": auth_server.url_for(password=None)}))
    with pytest.raises(redis.AuthenticationError):
        client.ping()


# TLS


def test_tls_with_ca_delivers(tls_server: RedisServer) -> None:
    config = make_config({"url": tls_server.url, "tls_ca_file": str(tls_server.ca_file)})
    on_channel, in_stream = publish_one(redis_from_config(config), verified_client(tls_server), "t1")
    assert on_channel == ["t1"]
    assert in_stream == ["t1"]


def test_tls_without_ca_fails(tls_server: RedisServer) -> None:
    # Without tls_ca_file the system's CAs verify the server, and none of them signed the test CA.
    client = redis_from_config(make_config({"url": tls_server.url}))
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        client.ping()


def test_tls_without_ca_never_delivers(tls_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    publisher = publish_failing(redis_from_config(make_config({"url": tls_server.url})))
    assert not publisher.close(2)
    assert publisher.published == 0
    assert verified_client(tls_server).xlen("vigil:events") == 0
    assert "certificate verify failed" in caplog.text
    assert PASSWORD not in caplog.text


def test_tls_plain_url_rejected(tls_server: RedisServer) -> None:
    # The TLS-only server has no plain-text port, so a redis:// client must not get through.
    url = f"redis://:{PASSWORD}@{LOCALHOST}:{tls_server.port}/0"
    client = redis_from_config(make_config({"url": url, "socket_timeout_s": 2}))
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_tls_client_certificate_accepted(mutual_tls_server: RedisServer) -> None:
    config = make_config(
        {
            "url": mutual_tls_server.url,
            "tls_ca_file": str(mutual_tls_server.ca_file),
            "tls_cert_file": str(mutual_tls_server.client_cert_file),
            "tls_key_file": str(mutual_tls_server.client_key_file),
        }
    )
    assert redis_from_config(config).ping()


def test_tls_missing_client_certificate_rejected(mutual_tls_server: RedisServer) -> None:
    config = make_config({"url": mutual_tls_server.url, "tls_ca_file": str(mutual_tls_server.ca_file)})
    with pytest.raises(redis.ConnectionError):
        redis_from_config(config).ping()


def test_tls_hostname_check_option(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("not read: the client connects lazily\n")
    url = f"rediss://{LOCALHOST}:6379/0"
    checking = make_config({"url": url, "tls_ca_file": str(ca_file)})
    not_checking = make_config({"url": url, "tls_ca_file": str(ca_file), "tls_check_hostname": False})
    assert redis_from_config(checking).connection_pool.connection_kwargs["ssl_check_hostname"] is True
    assert redis_from_config(not_checking).connection_pool.connection_kwargs["ssl_check_hostname"] is False


# Config validation and secrecy


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"url": "redis://127.0.0.1:6379/0", "tls_check_hostname": False}, "needs a rediss:// url"),
        ({"url": "rediss://127.0.0.1:6379/0", "tls_key_file": "{ca}"}, "without tls_cert_file"),
        ({"url": "rediss://127.0.0.1:6379/0", "tls_ca_file": "{missing}"}, "does not point to a file"),
        ({"url": "http://127.0.0.1:6379/0"}, "redis://, rediss:// or unix://"),
        ({"url": f"redis://:{PASSWORD}@127.0.0.1:6379/0", "password": PASSWORD}, "both url and password"),
    ],
)
def test_redis_config_rejected(tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    existing = tmp_path / "ca.crt"
    existing.write_text("")
    paths = {"ca": str(existing), "missing": str(tmp_path / "missing.crt")}
    section = {
        key: value.format(**paths) if isinstance(value, str) else value for key, value in section.items()
    }
    with pytest.raises(ConfigError) as caught:
        make_config(section)
    messages = [f"{path}: {reason}" for path, reason in caught.value.problems]
    assert len(messages) == 1
    assert messages[0].startswith("redis")
    assert expected in messages[0]


def test_config_error_hides_password() -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"url": f"http://:{PASSWORD}@127.0.0.1:6379/0"})
    assert PASSWORD not in str(caught.value)


def test_config_repr_hides_password() -> None:
    config = make_config({"url": f"rediss://:{PASSWORD}@127.0.0.1:6379/0"})
    other = make_config({"url": "redis://127.0.0.1:6379/0", "password": PASSWORD})
    assert PASSWORD not in repr(config)
    assert PASSWORD not in str(config)
    assert PASSWORD not in repr(config.redis)
    assert PASSWORD not in repr(other.redis)
    assert PASSWORD not in config.model_dump_json()
    assert PASSWORD not in repr(redis_from_config(config))


def test_delivery_logs_hide_password(tls_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config({"url": tls_server.url, "tls_ca_file": str(tls_server.ca_file)})
    on_channel, _in_stream = publish_one(redis_from_config(config), verified_client(tls_server), "t2")
    assert on_channel == ["t2"]
    assert PASSWORD not in caplog.text
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


# vigil alerts


def parse_alerts_args(*arguments: str) -> Any:
    return build_parser().parse_args(["alerts", *arguments])


def test_alerts_client_uses_tls_options(tls_server: RedisServer) -> None:
    args = parse_alerts_args(
        "--redis", tls_server.url, "--tls-ca-file", str(tls_server.ca_file), "--no-tls-check-hostname"
    )
    client = alerts_client(args)
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(tls_server.ca_file)
    assert pool.connection_kwargs["ssl_check_hostname"] is False
    assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
    assert pool.connection_kwargs["socket_timeout"] is None
    assert client.ping()


def test_alerts_command_reads_over_mutual_tls(mutual_tls_server: RedisServer) -> None:
    server = mutual_tls_server
    client = redis_from_config(
        make_config(
            {
                "url": server.url,
                "tls_ca_file": str(server.ca_file),
                "tls_cert_file": str(server.client_cert_file),
                "tls_key_file": str(server.client_key_file),
            }
        )
    )
    _on_channel, in_stream = publish_one(client, verified_client(server), "over-tls")
    assert in_stream == ["over-tls"]
    command = [
        sys.executable, "-m", "pipeline", "alerts", "--redis", server.url, "--from-id", "0", "--json",
        "--tls-ca-file", str(server.ca_file),
        "--tls-cert-file", str(server.client_cert_file),
        "--tls-key-file", str(server.client_key_file),
    ]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            # The command follows the stream until stopped; the first line is the alert published above.
            lines: list[str] = []
            assert process.stdout is not None
            stdout = process.stdout
            reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
            reader.start()
            reader.join(30)
        finally:
            process.terminate()
            _out, errors = process.communicate(timeout=10)
    assert lines and lines[0], f"vigil alerts printed nothing; stderr: {errors}"
    message = json.loads(lines[0])
    assert message["event_id"] == "over-tls"
    assert message["schema"] == 1


def test_alerts_client_matches_daemon(tls_server: RedisServer) -> None:
    args = parse_alerts_args("--redis", tls_server.url, "--tls-ca-file", str(tls_server.ca_file))
    config = make_config({"url": tls_server.url, "tls_ca_file": str(tls_server.ca_file)})
    from_cli = alerts_client(args).connection_pool.connection_kwargs
    from_daemon = redis_from_config(config).connection_pool.connection_kwargs
    ssl_keys = sorted(key for key in from_daemon if key.startswith("ssl_"))
    assert ssl_keys
    assert {key: from_cli.get(key) for key in ssl_keys} == {key: from_daemon[key] for key in ssl_keys}
    assert from_cli["password"] == from_daemon["password"]


def test_alerts_client_reads_env_url(monkeypatch: pytest.MonkeyPatch, auth_server: RedisServer) -> None:
    monkeypatch.setenv("VIGIL_REDIS_URL", auth_server.url)
    client = alerts_client(parse_alerts_args())
    assert client.ping()


def test_alerts_client_rejects_plain_tls() -> None:
    args = parse_alerts_args("--redis", "redis://127.0.0.1:6379/0", "--no-tls-check-hostname")
    with pytest.raises(ConfigError) as caught:
        alerts_client(args)
    assert caught.value.problems == [("options", "tls_check_hostname needs a rediss:// url")]


def test_alerts_client_error_hides_password() -> None:
    args = parse_alerts_args("--redis", f"http://:{PASSWORD}@127.0.0.1:6379/0")
    with pytest.raises(ConfigError) as caught:
        alerts_client(args)
    assert caught.value.problems[0][0] == "--redis"
    assert PASSWORD not in str(caught.value)


def test_publisher_survives_a_server_that_is_not_redis(tmp_path: Path) -> None:
    # An HTTP server where Redis was expected, so the start-up ping gets a reply it cannot parse.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = redis.Redis(host="127.0.0.1", port=server.server_address[1], socket_timeout=2)
        publisher = AlertPublisher(RedisConfig(), client, spool=Spool(tmp_path, 1 << 20))
        publisher.start()
        time.sleep(1.0)
        assert publisher._thread.is_alive(), "the publisher thread ended at start"
        publisher.submit(make_message("kept"))
        assert not publisher.close(3)
        assert publisher.spooled == 1
    finally:
        server.shutdown()
        server.server_close()
