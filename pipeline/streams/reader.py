"""One reader thread per camera: open, decode, pace, reconnect.

A reader is a small state machine::

    connecting -> streaming -> (error) -> backoff -> connecting ...
                            -> (end of file, loop) -> connecting
                            -> (end of file, no loop) -> ended
    any state  -> (stop()) -> stopped

Every transition is logged with the camera id and reported to the listener, which
the daemon uses for metrics. Credentials in the camera URL never reach a log line:
every message goes through ``redact_text`` first.
"""

from __future__ import annotations

import enum
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast
from urllib.parse import urlsplit

import av
import av.error
import numpy as np
import numpy.typing as npt

from pipeline.config import NETWORK_SCHEMES, CameraConfig
from pipeline.errors import (
    OpenFailure,
    StreamDamagedError,
    StreamEndedError,
    StreamError,
    StreamOpenError,
    StreamStalledError,
)
from pipeline.records import Frame
from pipeline.redact import redact_text, redact_url, url_secrets
from pipeline.streams.backoff import Backoff, ExponentialBackoff
from pipeline.streams.slot import FrameSlot

logger = logging.getLogger(__name__)


class ReaderState(enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKOFF = "backoff"
    ENDED = "ended"
    STOPPED = "stopped"


StateListener = Callable[[str, ReaderState, "StreamError | None"], None]


def is_network_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in NETWORK_SCHEMES


def classify_open_error(camera: str, url: str, exc: BaseException) -> StreamOpenError:
    """Map a PyAV or OS error raised while opening to a ``StreamOpenError`` with a reason."""
    message = redact_text(str(exc), url_secrets(url))
    reason: OpenFailure
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        reason = "auth"
    elif isinstance(exc, av.error.HTTPNotFoundError | FileNotFoundError):
        reason = "not_found"
    elif isinstance(exc, TimeoutError | av.error.ExitError):
        reason = "timeout"
    elif isinstance(exc, ConnectionError) or getattr(exc, "errno", None) in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    ):
        reason = "unreachable"
    elif isinstance(exc, av.error.InvalidDataError):
        reason = "invalid_data"
    elif "401" in message or "Unauthorized" in message:
        reason = "auth"
    elif "resolve" in message.lower() or "name or service" in message.lower():
        reason = "unreachable"
    else:
        reason = "unknown"
    return StreamOpenError(camera, reason, message)


class StreamReader:
    """Reads one camera into its ``FrameSlot`` on a daemon thread until ``stop()``."""

    def __init__(
        self,
        camera: str,
        config: CameraConfig,
        slot: FrameSlot,
        backoff: Backoff | None = None,
        listener: StateListener | None = None,
    ) -> None:
        self.camera = camera
        self.config = config
        self.slot = slot
        self.backoff = backoff or ExponentialBackoff(
            initial=config.backoff.initial_s,
            maximum=config.backoff.max_s,
            multiplier=config.backoff.multiplier,
            jitter=config.backoff.jitter,
        )
        self._listener = listener
        self._url = config.url.get_secret_value()
        self._secrets = url_secrets(self._url)
        self._is_network = is_network_url(self._url)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"reader-{camera}", daemon=True)
        self._state = ReaderState.CONNECTING
        self._seq = 0
        self._last_timestamp = -1.0
        self.frames_read = 0
        self.reconnects = 0
        self.last_frame_at: float | None = None
        self.last_error: StreamError | None = None

    @property
    def state(self) -> ReaderState:
        with self._lock:
            return self._state

    @property
    def safe_url(self) -> str:
        return redact_url(self._url)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; return False if it is still running after ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set_state(self, state: ReaderState, error: StreamError | None = None) -> None:
        with self._lock:
            if state is self._state and error is None:
                return
            previous, self._state = self._state, state
        if error is not None:
            logger.warning("camera %s: %s -> %s: %s", self.camera, previous.value, state.value, error)
        else:
            logger.info("camera %s: %s -> %s", self.camera, previous.value, state.value)
        if self._listener is not None:
            self._listener(self.camera, state, error)

    def _run(self) -> None:
        logger.info("camera %s: reader started for %s", self.camera, self.safe_url)
        self._set_state(ReaderState.CONNECTING)
        while not self._stop.is_set():
            try:
                self._read_once()
            except StreamDamagedError as exc:
                # Reading the same damaged file again would replay its frames as new ones.
                self.last_error = exc
                self._set_state(ReaderState.ENDED, exc)
                return
            except StreamEndedError:
                self._set_state(ReaderState.ENDED)
                return
            except StreamError as exc:
                self.last_error = exc
                self._wait_before_retry(exc)
            except Exception as exc:
                # A decoder bug or an unexpected PyAV error must not end the camera for good.
                error = StreamError(self.camera, redact_text(f"{type(exc).__name__}: {exc}", self._secrets))
                logger.exception("camera %s: unexpected reader error", self.camera)
                self.last_error = error
                self._wait_before_retry(error)
        self._set_state(ReaderState.STOPPED)

    def _wait_before_retry(self, error: StreamError) -> None:
        if self._stop.is_set():
            return
        delay = self.backoff.next_delay()
        self._set_state(ReaderState.BACKOFF, error)
        logger.info("camera %s: reconnecting in %.1f s", self.camera, delay)
        if not self._stop.wait(delay):
            self.reconnects += 1
            self._set_state(ReaderState.CONNECTING)

    def _open(self) -> av.container.InputContainer:
        options = {}
        if self._is_network:
            options = {"analyzeduration": "200000", "probesize": "65536"}
            if urlsplit(self._url).scheme.lower() in ("rtsp", "rtsps"):
                options["rtsp_transport"] = self.config.transport
        try:
            container = av.open(
                self._url,
                options=options,
                timeout=(self.config.open_timeout_s, self.config.stall_timeout_s),
            )
        except (av.error.FFmpegError, OSError) as exc:
            raise classify_open_error(self.camera, self._url, exc) from None
        if not container.streams.video:
            container.close()
            raise StreamOpenError(self.camera, "codec", "the source has no video stream")
        video = container.streams.video[0]
        if video.codec_context is None:
            tag = getattr(video, "codec_tag", "") or "unknown"
            container.close()
            raise StreamOpenError(
                self.camera, "codec", f"no decoder for the video codec (tag {tag!r}) in this FFmpeg build"
            )
        return container

    def iter_frames(self) -> Iterator[Frame]:
        """Read the source once on the caller's thread, without reconnecting: for recorded files.

        Opening errors are raised as ``StreamOpenError``; the slot is not used.
        """
        container = self._open()
        try:
            yield from self._decode(container)
        finally:
            container.close()

    def _read_once(self) -> None:
        """Open the source and read until it ends or fails."""
        container = self._open()
        frames = 0
        try:
            self._set_state(ReaderState.STREAMING)
            for frame in self._decode(container):
                frames += 1
                if frames == 1:
                    # Only a source that delivers frames counts as healthy; one that
                    # accepts the connection and then fails keeps backing off.
                    self.backoff.reset()
                # Under the WAIT policy put() blocks while the pipeline is busy; retry in
                # short steps so that stop() is noticed.
                while not self.slot.put(frame, timeout=0.5):
                    if self._stop.is_set():
                        return
        finally:
            container.close()
        if self._stop.is_set():
            return
        if self._is_network:
            raise StreamStalledError(self.camera, "the server ended the stream")
        if not self.config.loop:
            raise StreamEndedError(self.camera, "end of file")
        if frames == 0:
            raise StreamError(
                self.camera, "no frame decoded from the file; check that it is a complete video"
            )
        # A loop is not a reconnect: the camera stays streaming.
        logger.debug("camera %s: end of file after %d frames; starting it again", self.camera, frames)

    def _check_complete(
        self,
        stream: av.video.stream.VideoStream,
        container: av.container.InputContainer,
        read_s: float,
        interval: float,
    ) -> None:
        """Raise ``StreamDamagedError`` when a file ended well before the duration its header declares.

        FFmpeg's threaded decoders end a truncated file quietly, as if it were complete,
        so the length read is compared with the length declared.
        """
        declared: float | None = None
        if stream.duration and stream.time_base:
            declared = float(stream.duration * stream.time_base)
        elif container.duration:
            declared = container.duration / 1_000_000
        if declared is None or read_s >= declared * 0.9 - 2 * interval:
            return
        damaged = StreamDamagedError(
            self.camera,
            f"damaged file: it ended after {read_s:.1f} s of the {declared:.1f} s its header declares",
        )
        if not self.config.loop:
            raise damaged
        logger.warning("camera %s: %s; starting the file again", self.camera, damaged)

    def _decode(self, container: av.container.InputContainer) -> Iterator[Frame]:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        interval = 1.0 / rate if rate > 0 else 0.04
        min_gap = 1.0 / self.config.fps if self.config.fps else 0.0
        pace = self.config.realtime and not self._is_network
        # Stream time continues across loops and reconnects: the first frame of a new
        # container follows the last frame of the previous one.
        offset = self._last_timestamp + interval if self._last_timestamp >= 0 else 0.0
        first_pts: float | None = None
        wall_start = time.monotonic()
        last_emitted = -1e9
        last_progress = time.monotonic()
        decoded_frames = 0
        emitted = 0
        try:
            for decoded in container.decode(stream):
                decoded_frames += 1
                if self._stop.is_set():
                    return
                now = time.monotonic()
                pts = decoded.time if decoded.time is not None else self._seq * interval
                if first_pts is None:
                    first_pts = pts
                timestamp = offset + (pts - first_pts)
                if timestamp <= self._last_timestamp:
                    # The source repeats old frames (a frozen encoder); only new ones count as progress.
                    if now - last_progress > self.config.stall_timeout_s:
                        raise StreamStalledError(
                            self.camera,
                            f"timestamps stopped advancing for {self.config.stall_timeout_s:.0f} s",
                        )
                    continue
                last_progress = now
                self._last_timestamp = timestamp
                if timestamp - last_emitted < min_gap - 1e-3:
                    continue
                if pace:
                    delay = wall_start + (pts - first_pts) - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                last_emitted = timestamp
                self._seq += 1
                self.frames_read += 1
                self.last_frame_at = time.time()
                yield Frame(
                    camera=self.camera,
                    seq=self._seq,
                    timestamp=timestamp,
                    captured_at=self.last_frame_at,
                    image=cast("npt.NDArray[np.uint8]", decoded.to_ndarray(format="bgr24")),
                    restarted=emitted == 0,
                )
                emitted += 1
            if not self._is_network and first_pts is not None:
                self._check_complete(stream, container, timestamp - offset, interval)
        except av.error.FFmpegError as exc:
            message = redact_text(str(exc), self._secrets)
            if isinstance(exc, av.error.ExitError | TimeoutError):
                raise StreamStalledError(self.camera, f"read timed out: {message}") from None
            if isinstance(exc, av.error.DecoderNotFoundError):
                raise StreamOpenError(self.camera, "codec", message) from None
            if not self._is_network and isinstance(exc, av.error.InvalidDataError) and decoded_frames:
                damaged = StreamDamagedError(
                    self.camera, f"damaged file: decoding failed after {decoded_frames} frames: {message}"
                )
                if not self.config.loop:
                    raise damaged from None
                logger.warning("camera %s: %s; starting the file again", self.camera, damaged)
                return
            if self.frames_read == 0 or isinstance(exc, av.error.InvalidDataError):
                raise StreamOpenError(self.camera, "invalid_data", message) from None
            raise StreamError(self.camera, f"decode failed: {message}") from None
