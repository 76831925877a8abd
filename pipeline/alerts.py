"""Alert messages, annotated snapshots and the Redis publisher.

Each event state becomes one JSON message (``"schema": 1``). It is sent with
PUBLISH on ``<prefix>:<camera>`` for live subscribers and with XADD to a stream
capped by ``MAXLEN ~`` for durable consumers. Publishing runs on its own thread
behind a bounded queue, so a slow or absent Redis never blocks the frame path.
While Redis is unreachable the publisher moves queued messages to an on-disk spool
(``pipeline.spool``) and retries the oldest with backoff, so messages keep their
order and survive a restart.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import redis

from pipeline.config import AlertsConfig, RedisConfig
from pipeline.records import Event, Frame
from pipeline.spool import Spool, SpoolFullError
from pipeline.streams.backoff import Backoff, ExponentialBackoff

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STREAM_FIELD = "alert"


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat(timespec="milliseconds")


def alert_message(event: Event, language: str = "en") -> dict[str, Any]:
    """Return the schema-1 alert message of ``event``, ready for ``json.dumps``."""
    return {
        "schema": SCHEMA_VERSION,
        "message_id": uuid.uuid4().hex,
        "event_id": event.id,
        "state": event.state,
        "camera": event.camera,
        "rule": event.rule,
        "rule_type": event.rule_type,
        "label": event.label,
        "severity": event.severity,
        "zone": event.zone,
        "track_ids": list(event.track_ids),
        "started_at": _iso(event.started_at),
        "ended_at": _iso(event.ended_at),
        "scores": event.scores,
        "box": None if event.box is None else [round(v, 1) for v in event.box],
        "details": event.details,
        "text": event.description.get(language, ""),
        "description": event.description,
        "snapshot": event.snapshot,
    }


def channel_for(prefix: str, camera: str) -> str:
    return f"{prefix}:{camera}"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """Return ``text`` reduced to a file-name-safe form that cannot climb out of a folder."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "_"
    return cleaned[:64]


class SnapshotWriter:
    """Writes one annotated JPEG per event under ``<dir>/<camera>/<date>/``."""

    def __init__(self, config: AlertsConfig) -> None:
        self.root = config.snapshot_dir
        self.quality = config.jpeg_quality

    def annotate(self, event: Event, frame: Frame) -> np.ndarray:
        image = frame.image.copy()
        if event.box is not None:
            x1, y1, x2, y2 = (round(v) for v in event.box)
            cv2.rectangle(image, (x1, y1), (x2, y2), (0, 0, 255), 2)
            caption = f"{event.rule} {event.label} #{','.join(map(str, event.track_ids))}"
            cv2.putText(
                image,
                caption,
                (x1, max(12, y1 - 6)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5,
                (0, 0, 255),
                1,
                cv2.LINE_AA,
            )
        stamp = dt.datetime.fromtimestamp(frame.captured_at).strftime("%Y-%m-%d %H:%M:%S")
        cv2.putText(
            image,
            f"{event.camera} {stamp}",
            (8, 18),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
        return image

    def path_for(self, event: Event) -> Path:
        when = dt.datetime.fromtimestamp(event.started_at)
        name = f"{when:%H%M%S}_{safe_name(event.rule)}_{event.id[:12]}.jpg"
        return self.root / safe_name(event.camera) / f"{when:%Y%m%d}" / name

    def write(self, event: Event, frame: Frame) -> str:
        """Encode and write the snapshot; return its path."""
        path = self.path_for(event)
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(
            ".jpg", self.annotate(event, frame), [cv2.IMWRITE_JPEG_QUALITY, self.quality]
        )
        if not ok:
            raise OSError(f"JPEG encoding failed for event {event.id} of camera {event.camera}")
        path.write_bytes(encoded.tobytes())
        return str(path)


PublishedListener = Callable[[dict[str, Any]], None]


class AlertPublisher:
    """Publishes alert messages to Redis from a thread of its own, in order.

    ``submit`` never blocks. When the in-memory queue is full the oldest message is
    dropped, logged at ERROR and counted, because a stale alert is worth less than a
    new one. With a ``spool``, a failed delivery moves the queue to disk, and the spool
    is delivered first, oldest first, once Redis answers again; ``close`` moves what
    is still queued to the spool for the next start.
    """

    def __init__(
        self,
        config: RedisConfig,
        client: redis.Redis,
        queue_size: int = 1000,
        backoff: Backoff | None = None,
        on_published: PublishedListener | None = None,
        on_failure: Callable[[], None] | None = None,
        on_drop: Callable[[dict[str, Any]], None] | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.spool = spool
        self.backoff = backoff or ExponentialBackoff(initial=0.2, maximum=10.0)
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._queue_size = queue_size
        self._condition = threading.Condition()
        self._stop = False
        self._closed = False
        self._on_published = on_published
        self._on_failure = on_failure
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._run, name="alert-publisher", daemon=True)
        self.published = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def __len__(self) -> int:
        with self._condition:
            return len(self._queue)

    def submit(self, message: dict[str, Any]) -> None:
        with self._condition:
            if self._closed:
                # For example a vision-language reply after shutdown, which no thread would send.
                self._drop(message, "the publisher is closed")
                return
            if len(self._queue) >= self._queue_size:
                self._drop(self._queue.popleft(), f"the alert queue is full ({self._queue_size})")
            self._queue.append(message)
            self._condition.notify()

    def _drop(self, message: dict[str, Any], reason: str) -> None:
        self.dropped += 1
        logger.error(
            "alert of event %s (%s, camera %s) lost: %s",
            message["event_id"],
            message["state"],
            message["camera"],
            reason,
        )
        if self._on_drop is not None:
            self._on_drop(message)

    @property
    def spooled(self) -> int:
        """Messages waiting in the on-disk spool."""
        return len(self.spool) if self.spool is not None else 0

    def close(self, timeout: float = 5.0) -> bool:
        """Publish what is queued for up to ``timeout`` seconds, then spool the rest; True when all was delivered."""
        with self._condition:
            self._stop = True
            self._condition.notify()
        self._thread.join(timeout)
        left = len(self)
        if self.spool is not None:
            if left:
                self._spool_queue()
                left = len(self)
            if self.spooled:
                logger.warning(
                    "publisher stopped with %d alerts in the spool %s; they are delivered at the next start",
                    self.spooled,
                    self.spool.directory,
                )
            if not self._thread.is_alive():
                self.spool.close()
        if left:
            logger.error("publisher stopped with %d alerts not delivered", left)
        with self._condition:
            self._closed = True
        return left == 0 and self.spooled == 0

    def _spool_queue(self) -> None:
        """Move every queued message, oldest first, to the end of the spool."""
        assert self.spool is not None
        with self._condition:
            moving = list(self._queue)
            self._queue.clear()
        for message in moving:
            try:
                self.spool.append(message)
            except (SpoolFullError, OSError, ValueError) as exc:
                # ValueError: the spool file was closed after a failed write.
                self._drop(message, str(exc))

    def _send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message, ensure_ascii=False)
        pipe = self.client.pipeline(transaction=False)
        pipe.publish(channel_for(self.config.channel_prefix, message["camera"]), payload)
        pipe.xadd(
            self.config.stream, {STREAM_FIELD: payload}, maxlen=self.config.stream_maxlen, approximate=True
        )
        pipe.execute()

    def _next(self) -> tuple[dict[str, Any], bool] | None:
        """Wait for the next message to deliver: the spool's oldest first, then the queue's.

        Returns None once ``close`` was called and nothing is left to try.
        """
        while True:
            with self._condition:
                while not self._queue and not self.spooled and not self._stop:
                    self._condition.wait()
                if not self.spooled:
                    return (self._queue[0], False) if self._queue else None
            # Messages produced while the spool is not empty go behind it, to keep the order.
            self._spool_queue()
            message = self.spool.peek() if self.spool is not None else None
            if message is not None:
                return message, True
            # The spool contained only invalid lines, which peek() skipped, so look again.

    def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds or until ``close``; new messages do not cut the wait short."""
        deadline = time.monotonic() + delay
        with self._condition:
            while not self._stop and (left := deadline - time.monotonic()) > 0:
                self._condition.wait(left)

    def _probe(self) -> None:
        """Ping Redis once at start, so that a wrong password is logged before the first alert."""
        try:
            self.client.ping()
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            logger.error(  # noqa: TRY400
                "Redis rejected the connection: %s; alerts will be %s until redis.url or redis.password is fixed",
                exc,
                "spooled" if self.spool is not None else "queued in memory",
            )
        except (redis.RedisError, OSError) as exc:
            # Not reachable, or a server other than Redis listens on that port.
            logger.warning("Redis is not reachable yet: %s; alerts wait until it responds", exc)
        else:
            logger.info("Redis responded to ping; publishing alerts")

    def _run(self) -> None:
        self._probe()
        failing = False
        while True:
            try:
                found = self._next()
                if found is None:
                    return
                retry_in = self._deliver(*found, failing=failing)
            except Exception:
                # An invalid spool or another unexpected error must not end delivery for good.
                logger.exception("alert publisher failed; retrying")
                retry_in = self.backoff.next_delay()
            failing = retry_in is not None
            if retry_in is not None:
                if self._stop:
                    return
                self._pause(retry_in)

    def _deliver(self, message: dict[str, Any], from_spool: bool, failing: bool) -> float | None:
        """Send one message and mark it delivered; return the seconds to wait when Redis failed."""
        try:
            self._send(message)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError) as exc:
            if self._on_failure is not None:
                self._on_failure()
            if self.spool is not None and not from_spool:
                self._spool_queue()
            delay = self.backoff.next_delay()
            if not failing:
                where = f"; spooling to {self.spool.directory}" if self.spool is not None else ""
                if isinstance(exc, redis.AuthenticationError | redis.ResponseError):
                    # Not an outage: retrying will not help until the settings change.
                    logger.error(  # noqa: TRY400
                        "Redis rejected the connection, retrying in %.1f s%s: %s; check redis.url, "
                        "redis.password and the server's ACL",
                        delay,
                        where,
                        exc,
                    )
                else:
                    logger.warning("publishing to Redis failed, retrying in %.1f s%s: %s", delay, where, exc)
            return delay
        if failing:
            logger.info("publishing to Redis recovered; %d alerts left in the spool", self.spooled)
        self.backoff.reset()
        if from_spool:
            assert self.spool is not None
            self.spool.pop()
        else:
            with self._condition:
                if self._queue and self._queue[0] is message:
                    self._queue.popleft()
        self.published += 1
        if self._on_published is not None:
            try:
                self._on_published(message)
            except Exception:
                logger.exception("alert listener failed on event %s", message.get("event_id"))
        return None
