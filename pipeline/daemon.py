"""Wiring of the whole pipeline, its processing thread, and orderly shutdown.

Threads: one reader per camera, one processing thread (gate, batch, detect, track,
cues, fusion scores, rules, describe, snapshot), one alert publisher, and the fusion
model watcher when a model folder is configured. The processing thread is the only
one that touches trackers, cues and rule state, so they need no locks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import malloc
from pipeline.alerts import AlertPublisher, SnapshotWriter, alert_message
from pipeline.batching import BatchScheduler
from pipeline.config import VigilConfig, check_rule_classes
from pipeline.detect import Detector, YoloDetector
from pipeline.detect.yolo import select_device
from pipeline.errors import ConfigError, StreamError, StreamOpenError
from pipeline.fusion import Describer, TemplateDescriber
from pipeline.fusion.scorer import FusionScorer
from pipeline.fusion.vlm import VlmDescriber
from pipeline.metrics import DEGRADED, Metrics
from pipeline.processing import BatchResult, CameraPipeline, Processor
from pipeline.records import Event, Frame
from pipeline.spool import Spool
from pipeline.streams import FrameSlot, Overflow, ReaderState, StreamReader, is_network_url

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 2.0
# Pause after an unexpected error in the processing loop, so a repeating fault cannot spin.
ERROR_PAUSE_S = 0.5


@dataclass
class CameraRuntime:
    """Everything the daemon keeps for one camera."""

    camera: str
    reader: StreamReader
    slot: FrameSlot
    pipeline: CameraPipeline
    counted_in: int = 0
    counted_dropped: int = 0
    counted_reconnects: int = 0
    processed: int = 0
    processed_at_last_stats: int = 0
    frames_at_last_stats: int = 0
    last_frame_age: float = 0.0
    degraded: bool = False


def camera_state(state: ReaderState, degraded: bool) -> str:
    """Return the state a camera shows in the metrics: ``degraded`` while it fails and does not stream."""
    if degraded and state is not ReaderState.STREAMING and state is not ReaderState.STOPPED:
        return DEGRADED
    return "connecting" if state is ReaderState.BACKOFF else state.value


def redis_from_config(config: VigilConfig) -> redis.Redis:
    """Create the Redis client of ``config.redis``, with its timeouts, password and TLS files.

    Connects lazily, so a wrong password or an untrusted certificate surfaces at the first command.
    """
    if config.redis.url is None:
        raise ConfigError(
            "<config>", [("redis.url", "not set; give a redis:// URL in the file or in $VIGIL_REDIS_URL")]
        )
    return redis.Redis.from_url(config.redis.url.get_secret_value(), **config.redis.client_options())


class Daemon:
    """Runs every enabled camera of ``config`` through the pipeline until ``stop()``.

    The detector, Redis client and describer can be passed in (tests do); otherwise
    they are built from the config.
    """

    def __init__(
        self,
        config: VigilConfig,
        detector: Detector | None = None,
        redis_client: redis.Redis | None = None,
        describer: Describer | None = None,
        on_published: Callable[[dict[str, Any]], None] | None = None,
        scorer: FusionScorer | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.detector: Detector = detector if detector is not None else YoloDetector(config.detector)
        names = getattr(self.detector, "names", None)
        if names:
            # A detector.classes filter leaves the rules only the classes it names.
            check_rule_classes(config, config.detector.classes or names.values())
        if scorer is None and config.fusion.enabled:
            device = select_device(config.fusion.device or config.detector.device)
            scorer = FusionScorer(config.fusion, device, getattr(self.detector, "feature_dim", 0))
        self.scorer = scorer
        self.processor = Processor(config, self.detector, scorer)
        self.describer = describer or TemplateDescriber(config.fusion.labels, config.fusion.names_zh)
        self.vlm = (
            VlmDescriber(config.fusion.vlm, self._on_vlm_text) if config.fusion.vlm is not None else None
        )
        self.snapshots = SnapshotWriter(config.alerts)
        client = redis_client if redis_client is not None else redis_from_config(config)
        spool = None
        if config.alerts.spool_dir is not None:
            spool = Spool(config.alerts.spool_dir, int(config.alerts.spool_max_mb * 1024 * 1024))
        self.publisher = AlertPublisher(
            config.redis,
            client,
            queue_size=config.alerts.queue_size,
            on_published=self._count_published if on_published is None else self._chain(on_published),
            on_failure=self.metrics.alerts_failed.inc,
            on_drop=lambda message: self.metrics.alerts_dropped.labels(camera=message["camera"]).inc(),
            spool=spool,
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.cameras: dict[str, CameraRuntime] = {}
        for camera_id, camera in config.cameras.items():
            if not camera.enabled:
                logger.info("camera %s: disabled in the config", camera_id)
                continue
            # A file read faster than real time is not live: waiting for the pipeline loses nothing.
            paced = camera.realtime or is_network_url(camera.url.get_secret_value())
            overflow = Overflow.DROP_OLDEST if paced else Overflow.WAIT
            slot = FrameSlot(camera.slot_size, wake=self._wake, overflow=overflow)
            self.cameras[camera_id] = CameraRuntime(
                camera=camera_id,
                reader=StreamReader(camera_id, camera, slot, listener=self._on_reader_state),
                slot=slot,
                pipeline=self.processor.cameras[camera_id],
            )
        self.scheduler = BatchScheduler(
            {camera_id: runtime.slot for camera_id, runtime in self.cameras.items()},
            self._wake,
            config.batching.max_batch,
            config.batching.max_wait_ms,
            admit=self._admit,
        )
        self._processor = threading.Thread(target=self._process_loop, name="processor", daemon=True)
        self._last_stats = time.monotonic()
        self.metrics_port: int | None = None
        self.messages_emitted = 0

    def _chain(self, listener: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def both(message: dict[str, Any]) -> None:
            self._count_published(message)
            listener(message)

        return both

    def _count_published(self, message: dict[str, Any]) -> None:
        self.metrics.alerts_published.labels(
            camera=message["camera"], rule_type=message["rule_type"], state=message["state"]
        ).inc()

    def _on_reader_state(self, camera: str, state: ReaderState, error: StreamError | None) -> None:
        """Record a reader's new state; runs on that camera's reader thread."""
        runtime = self.cameras[camera]
        if error is not None:
            runtime.degraded = True
            reason = error.reason if isinstance(error, StreamOpenError) else type(error).__name__
            self.metrics.camera_errors.labels(camera=camera, reason=reason).inc()
        elif state is ReaderState.STREAMING:
            runtime.degraded = False
        self.metrics.set_camera_state(camera, camera_state(state, runtime.degraded))

    def start(self) -> None:
        malloc.limit_arenas()
        if self.config.metrics.enabled:
            self.metrics_port = self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
        self.publisher.start()
        if self.scorer is not None:
            self.scorer.start()
        if self.vlm is not None:
            self.vlm.start()
        for runtime in self.cameras.values():
            self.metrics.set_camera_state(runtime.camera, camera_state(ReaderState.CONNECTING, False))
            runtime.reader.start()
        self._processor.start()
        logger.info("daemon started with %d cameras", len(self.cameras))

    def stop(self, timeout: float = 8.0) -> None:
        """Stop readers and processing, then publish what is queued; bounded by ``timeout`` seconds overall."""
        deadline = time.monotonic() + timeout
        logger.info("daemon stopping")
        self._stop.set()
        self._wake.set()
        for runtime in self.cameras.values():
            runtime.reader.stop()
        self._processor.join(max(0.1, deadline - time.monotonic()))
        if not self._processor.is_alive():
            self._end_active_events()
        for runtime in self.cameras.values():
            if not runtime.reader.join(max(0.05, min(1.0, deadline - time.monotonic()))):
                logger.warning("camera %s: reader still blocked at shutdown", runtime.camera)
        if self.scorer is not None:
            self.scorer.stop()
        if self.vlm is not None:
            self.vlm.stop()
        self.publisher.close(max(0.5, deadline - time.monotonic()))
        self.metrics.close()
        logger.info(
            "daemon stopped: %d alert messages produced, %d published",
            self.messages_emitted,
            self.publisher.published,
        )

    def _end_active_events(self) -> None:
        """Publish ``ended`` for every event still active, so that no event is left open by a stop."""
        now = time.time()
        for pipeline in self.processor.cameras.values():
            for event in pipeline.rules.end_all(now):
                try:
                    self._emit(event, None)
                except Exception:
                    logger.exception(
                        "camera %s: ended message of event %s could not be published", event.camera, event.id
                    )

    def wait(self, duration: float | None = None) -> None:
        """Block until ``stop()`` is called or ``duration`` seconds have passed."""
        self._stop.wait(duration)

    def _admit(self, frame: Frame) -> bool:
        runtime = self.cameras[frame.camera]
        runtime.processed += 1
        self.metrics.frames_processed.labels(camera=frame.camera).inc()
        return self.processor.admit(frame)

    def _process_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._process_next()
            except Exception:
                # The stats, a model swap or the motion gate failed: log it and keep the cameras going.
                logger.exception("processing loop failed; continuing")
                self._stop.wait(ERROR_PAUSE_S)

    def _process_next(self) -> None:
        batch = self.scheduler.next_batch(self._stop)
        if batch:
            try:
                self._process_batch(batch)
            except Exception:
                # One bad batch must not end all cameras; the traceback shows what broke.
                logger.exception(
                    "processing failed for a batch of %d frames (cameras: %s)",
                    len(batch),
                    ", ".join(sorted({frame.camera for frame in batch})),
                )
        if time.monotonic() - self._last_stats >= STATS_INTERVAL_S:
            self._update_stats()
            malloc.trim()
            # A newly published model is taken up even while no track needs a score.
            if self.scorer is not None:
                self.scorer.swap_if_reloaded()

    def _process_batch(self, batch: list[Frame]) -> None:
        result = self.processor.process(batch)
        self._observe(result)
        for event, frame in result.events:
            try:
                self._emit(event, frame)
            except Exception:
                # The other events of the batch are still published.
                logger.exception(
                    "camera %s: event %s (%s, %s) could not be published",
                    event.camera,
                    event.id,
                    event.rule,
                    event.state,
                )

    def _observe(self, result: BatchResult) -> None:
        self.metrics.detector_batch_ms.observe(result.detector_ms)
        self.metrics.detector_batch_size.observe(len(result.tracked))
        if result.scored:
            self.metrics.fusion_batch_ms.observe(result.fusion_ms)
            self.metrics.fusion_batch_size.observe(result.scored)
        now = time.time()
        for frame, tracked in result.tracked:
            runtime = self.cameras[frame.camera]
            runtime.last_frame_age = now - frame.captured_at
            self.metrics.frame_age.labels(camera=frame.camera).set(runtime.last_frame_age)
            self.metrics.frames_detected.labels(camera=frame.camera).inc()
            live = len(runtime.pipeline.tracker.tracks)
            self.metrics.active_tracks.labels(camera=frame.camera).set(live)
            logger.debug(
                "camera %s frame %d: %d tracked boxes, %d tracks", frame.camera, frame.seq, len(tracked), live
            )

    def _emit(self, event: Event, frame: Frame | None) -> None:
        """Describe and publish ``event``; ``frame`` is needed for the snapshot of a started event."""
        snapshot = event.snapshot
        if event.state == "started" and frame is not None:
            try:
                snapshot = self.snapshots.write(event, frame)
            except OSError:
                logger.exception(
                    "camera %s: snapshot of event %s could not be written", event.camera, event.id
                )
        else:
            snapshot = snapshot or str(self.snapshots.path_for(event))
        described = event.with_updates(description=self.describer.describe(event), snapshot=snapshot)
        if event.state == "updated" and not self.config.alerts.publish_updates:
            return
        self.messages_emitted += 1
        logger.info("camera %s: event %s %s (%s)", event.camera, event.rule, event.state, event.id)
        self.publisher.submit(alert_message(described, self.config.alerts.language))
        self.metrics.alert_queue.set(len(self.publisher))
        self.metrics.alert_spool.set(self.publisher.spooled)
        if self.vlm is not None and event.state == "started":
            self.vlm.submit(described, snapshot)

    def _on_vlm_text(self, event: Event, texts: dict[str, str]) -> None:
        """Publish the event again with the vision-language model's text; runs on a describer thread."""
        updated = event.with_updates(state="updated", description={**event.description, **texts})
        logger.info("camera %s: event %s described by the vision-language model", event.camera, event.id)
        self.publisher.submit(alert_message(updated, self.config.alerts.language))

    def _update_stats(self) -> None:
        now = time.monotonic()
        elapsed = now - self._last_stats
        self._last_stats = now
        for runtime in self.cameras.values():
            reader, camera = runtime.reader, runtime.camera
            self.metrics.frames_in.labels(camera=camera).inc(reader.frames_read - runtime.counted_in)
            runtime.counted_in = reader.frames_read
            self.metrics.frames_dropped.labels(camera=camera).inc(
                runtime.slot.dropped - runtime.counted_dropped
            )
            runtime.counted_dropped = runtime.slot.dropped
            self.metrics.reconnects.labels(camera=camera).inc(reader.reconnects - runtime.counted_reconnects)
            runtime.counted_reconnects = reader.reconnects
            self.metrics.fps_in.labels(camera=camera).set(
                (reader.frames_read - runtime.frames_at_last_stats) / elapsed
            )
            runtime.frames_at_last_stats = reader.frames_read
            self.metrics.fps_processed.labels(camera=camera).set(
                (runtime.processed - runtime.processed_at_last_stats) / elapsed
            )
            runtime.processed_at_last_stats = runtime.processed
        self.metrics.alert_queue.set(len(self.publisher))
