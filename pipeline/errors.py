"""Exceptions raised by Vigil.

    VigilError
    ├── ConfigError            invalid configuration; fix the file and restart
    ├── ModelLoadError         detector weights missing or unreadable
    ├── SampleDataError        sample clips missing or failing their checksum
    └── StreamError            a camera failed; the reader retries with backoff
        ├── StreamOpenError        open failed (classified by ``reason``)
        ├── StreamStalledError     no new frame within the stall timeout
        └── StreamEndedError       a file camera reached its end and does not loop

Operational failures (``StreamError`` and Redis connection errors) are retried at
the boundary that owns them. Programming errors (``TypeError``, ``ValueError`` from
record validation) are not caught by the pipeline and surface with their traceback.
"""

from __future__ import annotations

from typing import Literal


class VigilError(Exception):
    """Base class of every error that Vigil raises on purpose."""


class ConfigError(VigilError):
    """The configuration is invalid; ``problems`` lists ``(field path, reason)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{path}: {reason}" for path, reason in problems]
        super().__init__(f"invalid configuration in {source}:\n  " + "\n  ".join(lines))


class TrainingError(VigilError):
    """Training or evaluation cannot run on the given data or settings."""


class ModelLoadError(VigilError):
    """Detector weights cannot be found or loaded."""


class SampleDataError(VigilError):
    """A sample clip is missing, cannot be downloaded, or fails its sha256 check."""


OpenFailure = Literal["not_found", "auth", "timeout", "unreachable", "codec", "invalid_data", "unknown"]


class StreamError(VigilError):
    """A camera stream failed. The message names the camera; it never contains credentials."""

    def __init__(self, camera: str, message: str) -> None:
        self.camera = camera
        super().__init__(f"camera {camera!r}: {message}")


class StreamOpenError(StreamError):
    """Opening a stream failed; ``reason`` classifies the failure for metrics and logs."""

    def __init__(self, camera: str, reason: OpenFailure, message: str) -> None:
        self.reason = reason
        super().__init__(camera, f"open failed ({reason}): {message}")


class StreamStalledError(StreamError):
    """The stream delivered no new frame within the stall timeout."""


class StreamEndedError(StreamError):
    """A file camera reached its end and is not configured to loop."""


class StreamDamagedError(StreamEndedError):
    """A file camera's data cannot be decoded past some point (a truncated or corrupt file)."""
