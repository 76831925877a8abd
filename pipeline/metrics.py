"""Prometheus metrics of one daemon, in a registry of its own."""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# A camera's state in the metrics: the reader's states, except that a camera whose
# last attempt failed (and has not streamed since) is "degraded" instead of
# connecting, in backoff or ended.
CAMERA_STATES = ("connecting", "streaming", "degraded", "ended", "stopped")
DEGRADED = "degraded"

logger = logging.getLogger(__name__)


class Metrics:
    """Every metric Vigil exports. Camera labels are camera ids, never URLs."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_in = Counter("vigil_frames_in", "Frames decoded from the camera.", ["camera"], registry=r)
        self.frames_processed = Counter(
            "vigil_frames_processed",
            "Frames taken by the pipeline (detected or skipped by the motion gate).",
            ["camera"],
            registry=r,
        )
        self.frames_detected = Counter(
            "vigil_frames_detected", "Frames sent to the detector.", ["camera"], registry=r
        )
        self.frames_dropped = Counter(
            "vigil_frames_dropped",
            "Frames dropped because the pipeline was busy (drop-oldest).",
            ["camera"],
            registry=r,
        )
        self.fps_in = Gauge(
            "vigil_camera_fps_in",
            "Frames per second decoded, over the last interval.",
            ["camera"],
            registry=r,
        )
        self.fps_processed = Gauge(
            "vigil_camera_fps_processed",
            "Frames per second processed, over the last interval.",
            ["camera"],
            registry=r,
        )
        self.frame_age = Gauge(
            "vigil_frame_age_seconds",
            "Seconds between capture and processing of the camera's last frame.",
            ["camera"],
            registry=r,
        )
        self.camera_state = Gauge(
            "vigil_camera_state",
            "1 for the camera's current state, 0 for the others: " + ", ".join(CAMERA_STATES) + ".",
            ["camera", "state"],
            registry=r,
        )
        self.reconnects = Counter(
            "vigil_camera_reconnects", "Reconnect attempts after a failure.", ["camera"], registry=r
        )
        self.camera_errors = Counter(
            "vigil_camera_errors", "Stream failures by reason.", ["camera", "reason"], registry=r
        )
        self.active_tracks = Gauge("vigil_active_tracks", "Live tracks.", ["camera"], registry=r)
        self.detector_batch_ms = Histogram(
            "vigil_detector_batch_ms",
            "Milliseconds per detector call.",
            buckets=(5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120),
            registry=r,
        )
        self.detector_batch_size = Histogram(
            "vigil_detector_batch_size",
            "Frames per detector call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.fusion_batch_ms = Histogram(
            "vigil_fusion_batch_ms",
            "Milliseconds per fusion model call over the track windows of one batch.",
            buckets=(5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120),
            registry=r,
        )
        self.fusion_batch_size = Histogram(
            "vigil_fusion_batch_size",
            "Track windows scored per fusion model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.alerts_published = Counter(
            "vigil_alerts_published",
            "Alert messages published to Redis.",
            ["camera", "rule_type", "state"],
            registry=r,
        )
        self.alerts_failed = Counter(
            "vigil_alerts_publish_failures", "Failed attempts to publish an alert (retried).", registry=r
        )
        self.alerts_dropped = Counter(
            "vigil_alerts_dropped", "Alerts lost because the publish queue was full.", ["camera"], registry=r
        )
        self.alert_queue = Gauge("vigil_alert_queue_length", "Alerts waiting to be published.", registry=r)
        self.alert_spool = Gauge(
            "vigil_alert_spool_length", "Alerts waiting in the on-disk spool for Redis.", registry=r
        )
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None

    def set_camera_state(self, camera: str, state: str) -> None:
        """Set the one-hot state series of ``camera``; ``state`` is one of ``CAMERA_STATES``."""
        if state not in CAMERA_STATES:
            raise ValueError(f"unknown camera state {state!r}; expected one of {', '.join(CAMERA_STATES)}")
        for candidate in CAMERA_STATES:
            self.camera_state.labels(camera=camera, state=candidate).set(1 if candidate == state else 0)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint on ``host:port``; return the bound port (useful with port 0)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._server_thread = server, thread
        bound = int(server.server_address[1])
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
