"""A bounded, append-only queue of alert messages on local disk.

While Redis is unreachable, the publisher appends each message to
``<dir>/spool.jsonl`` (one JSON document per line, fsynced) and keeps the byte
offset of the oldest undelivered line in ``<dir>/spool.offset``. Delivery reads
from that offset in order and moves it forward after each message reaches Redis,
so messages survive a restart of the daemon and arrive in the order they were
produced. A message that reached Redis just before a crash, but whose offset was
not yet saved, is sent again at the next start: consumers drop such duplicates by
``message_id``.

One process at a time owns a spool folder (an advisory ``flock`` on ``lock``), and
a lock inside makes one ``Spool`` safe to use from several threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

from pipeline.errors import VigilError

logger = logging.getLogger(__name__)

DATA_FILE = "spool.jsonl"
OFFSET_FILE = "spool.offset"
LOCK_FILE = "lock"
# Fields the publisher reads from every message.
REQUIRED_KEYS = ("message_id", "event_id", "state", "camera")


class SpoolError(VigilError):
    """The spool folder cannot be used."""


class SpoolFullError(SpoolError):
    """Appending would grow the spool past its size limit."""


def _alert_message(line: bytes) -> dict[str, Any]:
    """Parse one spool line; raise ValueError or TypeError when it is not an alert message."""
    message = dict(json.loads(line))
    missing = [key for key in REQUIRED_KEYS if key not in message]
    if missing:
        raise ValueError(f"not an alert message: no {', '.join(missing)}")
    return message


class Spool:
    """Undelivered alert messages on disk, oldest first, bounded by ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._lock = (directory / LOCK_FILE).open("a")
        except OSError as exc:
            raise SpoolError(f"cannot use spool folder {directory}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolError(
                f"spool folder {directory} is in use by another Vigil process; give each daemon its own "
                "alerts.spool_dir"
            ) from None
        self._data_path = directory / DATA_FILE
        self._offset_path = directory / OFFSET_FILE
        self._mutex = threading.Lock()
        self._offset = self._read_offset()
        self._data: IO[bytes] = self._data_path.open("a+b")
        self._drop_torn_tail()
        self._check_offset()
        self._pending = self._count_pending()
        if self._pending:
            logger.info(
                "alert spool %s contains %d undelivered alerts from an earlier run", directory, self._pending
            )

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text(encoding="ascii").strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise SpoolError(f"invalid spool offset file {self._offset_path}: {exc}") from exc

    def _drop_torn_tail(self) -> None:
        """Drop a last line that a crash left without its newline, because that message was never spooled whole."""
        size = self._data_path.stat().st_size
        if size == 0:
            return
        self._data.seek(max(0, size - 1))
        if self._data.read(1) == b"\n":
            return
        self._data.seek(0)
        content = self._data.read()
        keep = content.rfind(b"\n") + 1
        logger.warning("alert spool %s: dropped a torn last line of %d bytes", self.directory, size - keep)
        self._data.truncate(keep)
        self._offset = min(self._offset, keep)

    def _check_offset(self) -> None:
        """Reset the offset to 0 when it lies past the end of the data file.

        A crash between emptying the data file after the last delivery and saving the
        new offset leaves such an offset, and everything before it was delivered.
        """
        size = self._data_path.stat().st_size
        if self._offset > size:
            logger.warning(
                "alert spool %s: offset %d lies past the end of %s (%d bytes); reading from the start",
                self.directory,
                self._offset,
                DATA_FILE,
                size,
            )
            self._offset = 0
            self._save_offset()

    def _count_pending(self) -> int:
        self._data.seek(self._offset)
        return sum(1 for line in self._data if line.strip())

    def __len__(self) -> int:
        return self._pending

    @property
    def size_bytes(self) -> int:
        return self._data_path.stat().st_size - self._offset

    def append(self, message: dict[str, Any]) -> None:
        """Write ``message`` at the end and fsync; raise ``SpoolFullError`` when it does not fit.

        When the write fails (a full disk), the file is cut back to its old size, so
        no partial line is left for a later read.
        """
        line = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
        with self._mutex:
            if self.size_bytes + len(line) > self.max_bytes:
                raise SpoolFullError(
                    f"alert spool {self.directory} is full ({self.size_bytes} of {self.max_bytes} bytes); "
                    "restore Redis or raise alerts.spool_max_mb"
                )
            end = self._data.seek(0, os.SEEK_END)
            try:
                self._data.write(line)
                self._data.flush()
                os.fsync(self._data.fileno())
            except OSError:
                self._truncate_to(end)
                raise
            self._pending += 1

    def _truncate_to(self, end: int) -> None:
        # Reopening drops whatever the failed write left in the file object's buffer.
        # Closing may fail again while it flushes that buffer, so its error is ignored.
        with contextlib.suppress(OSError):
            self._data.close()
        self._data = self._data_path.open("a+b")
        self._data.truncate(end)

    def peek(self) -> dict[str, Any] | None:
        """Return the oldest undelivered message, or None when the spool is empty.

        An invalid JSON line (a damaged file) is logged and skipped.
        """
        with self._mutex:
            while self._pending:
                self._data.seek(self._offset)
                line = self._data.readline()
                if not line:
                    logger.error(
                        "alert spool %s: %d alerts counted but the file ends at offset %d",
                        self.directory,
                        self._pending,
                        self._offset,
                    )
                    self._pending = 0
                    return None
                if not line.strip():
                    self._offset += len(line)
                    continue
                try:
                    return _alert_message(line)
                except (ValueError, TypeError) as exc:
                    logger.error(  # noqa: TRY400
                        "alert spool %s: skipped an invalid JSON line at offset %d: %s",
                        self.directory,
                        self._offset,
                        exc,
                    )
                    self._advance(len(line))
            return None

    def pop(self) -> None:
        """Mark the oldest message delivered; the spool files shrink to nothing once all are."""
        with self._mutex:
            if not self._pending:
                return
            self._data.seek(self._offset)
            self._advance(len(self._data.readline()))

    def _advance(self, length: int) -> None:
        self._offset += length
        self._pending -= 1
        if self._pending == 0:
            self._data.truncate(0)
            self._offset = 0
        self._save_offset()

    def _save_offset(self) -> None:
        partial = self._offset_path.with_suffix(".partial")
        partial.write_text(str(self._offset), encoding="ascii")
        os.replace(partial, self._offset_path)

    def close(self) -> None:
        with self._mutex:
            self._data.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
