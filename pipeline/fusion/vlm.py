"""Optional descriptions from a vision-language model behind an OpenAI-compatible chat endpoint.

The daemon publishes every alert at once with its template description. When a
``fusion.vlm`` endpoint is configured, each new event's snapshot and structured
fields are also sent to it by worker threads, off the frame path and with a
timeout. When the reply arrives, the event is published again with the same id,
state ``updated`` and the model's sentences under ``description.vlm_en`` and
``description.vlm_zh``. A slow, failing or absent endpoint only costs those
extra sentences.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import VlmConfig
from pipeline.records import Event

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You describe events seen by a surveillance camera for a security operator. Answer with a JSON "
    'object {"en": "...", "zh": "..."}: one short factual sentence in English and the same sentence '
    "in Simplified Chinese. Say only what the image and the event fields support."
)

# Seconds an idle worker waits for a request before it checks whether stop() was called.
STOP_POLL_S = 0.2

# Called on a worker thread with the event and its new description fields.
TextListener = Callable[[Event, dict[str, str]], None]


def event_summary(event: Event) -> dict[str, Any]:
    """Return the structured part of the request, which is what the rules already know about the event."""
    return {
        "camera": event.camera,
        "rule": event.rule,
        "rule_type": event.rule_type,
        "label": event.label,
        "zone": event.zone,
        "scores": event.scores,
        "details": event.details,
        "template_description": event.description.get("en", ""),
    }


def parse_reply(content: str) -> dict[str, str]:
    """Read ``{"en": ..., "zh": ...}`` from the reply, with or without a Markdown code fence.

    A reply that is not a JSON object is taken as English text. The result is empty
    when the object has neither an ``en`` nor a ``zh`` value.
    """
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {"vlm_en": text}
    if not isinstance(data, dict):
        return {"vlm_en": text}
    texts: dict[str, str] = {}
    for key in ("en", "zh"):
        if data.get(key):
            texts[f"vlm_{key}"] = str(data[key]).strip()
    return texts


# A chat completion of a few sentences is a few kilobytes; more is not a reply to use.
MAX_REPLY_BYTES = 1_000_000


class _RejectRedirect(urllib.request.HTTPRedirectHandler):
    """Turn a redirect into an HTTPError instead of following it."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class VlmDescriber:
    """Pool of worker threads that ask the endpoint about each submitted event and hand the text back.

    ``answered``, ``failed`` and ``skipped`` count the events described, those whose
    request or callback failed, and those dropped because the queue was full or the
    describer stopped.
    """

    def __init__(self, config: VlmConfig, on_text: TextListener) -> None:
        self.config = config
        self.on_text = on_text
        self._queue: queue.Queue[tuple[Event, str | None]] = queue.Queue(config.queue_size)
        self._stop = threading.Event()
        self._counts_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"vlm-{index}", daemon=True)
            for index in range(config.workers)
        ]
        self.answered = 0
        self.failed = 0
        self.skipped = 0
        # No redirects: urllib would send the Authorization header on to the new host.
        self._opener = urllib.request.build_opener(_RejectRedirect())

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        """Stop the workers after their current request; requests still queued are dropped.

        Waits up to ``timeout`` seconds in all for the workers to end. A worker that is
        still waiting for the endpoint ends once its request returns or times out.
        """
        self._stop.set()
        dropped = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += 1
        if dropped:
            self._count("skipped", dropped)
            logger.warning("vision-language describer stopped: %d queued events not described", dropped)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, event: Event, snapshot: str | None) -> bool:
        """Queue a request; return False when the queue is full or the describer stopped."""
        if self._stop.is_set():
            self._count("skipped")
            logger.warning(
                "vision-language describer stopped: event %s of camera %s not described",
                event.id,
                event.camera,
            )
            return False
        try:
            self._queue.put_nowait((event, snapshot))
        except queue.Full:
            self._count("skipped")
            logger.warning(
                "vision-language queue full (%d): event %s of camera %s not described; "
                "raise fusion.vlm.workers or fusion.vlm.queue_size if this repeats",
                self.config.queue_size,
                event.id,
                event.camera,
            )
            return False
        return True

    def _count(self, name: str, amount: int = 1) -> None:
        with self._counts_lock:
            setattr(self, name, getattr(self, name) + amount)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                event, snapshot = self._queue.get(timeout=STOP_POLL_S)
            except queue.Empty:
                continue
            self._describe_one(event, snapshot)

    def _describe_one(self, event: Event, snapshot: str | None) -> None:
        """Describe one event and pass the text on, logging and counting each expected failure."""
        try:
            texts = self.describe(event, snapshot)
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as exc:
            self._count("failed")
            logger.warning(
                "vision-language description of event %s (camera %s) failed: %s",
                event.id,
                event.camera,
                exc,
            )
            return
        if not texts:
            self._count("failed")
            logger.warning(
                "vision-language reply for event %s (camera %s) has no 'en' or 'zh' text; "
                "check that the model follows the system prompt",
                event.id,
                event.camera,
            )
            return
        try:
            self.on_text(event, texts)
        except Exception:
            # The worker must survive a failing callback, or later events would never be described.
            self._count("failed")
            logger.exception(
                "publishing the vision-language description of event %s (camera %s) failed",
                event.id,
                event.camera,
            )
            return
        self._count("answered")

    def _request_body(self, event: Event, snapshot: str | None) -> dict[str, Any]:
        content: list[dict[str, Any]] = [
            {"type": "text", "text": json.dumps(event_summary(event), ensure_ascii=False)}
        ]
        if snapshot is not None and Path(snapshot).is_file():
            encoded = base64.b64encode(Path(snapshot).read_bytes()).decode("ascii")
            content.append({"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{encoded}"}})
        return {
            "model": self.config.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}],
            "max_tokens": self.config.max_tokens,
            "temperature": 0,
        }

    def describe(self, event: Event, snapshot: str | None) -> dict[str, str]:
        """Ask the endpoint once and return the description fields.

        ``timeout_s`` bounds the connection and each read, not the whole request, so a
        server that keeps sending slowly can hold a worker longer. Raises ``OSError`` or
        ``http.client.HTTPException`` when the request fails, and ``ValueError``,
        ``KeyError``, ``IndexError`` or ``TypeError`` when the reply is not a chat
        completion with a text message.
        """
        body = json.dumps(self._request_body(event, snapshot)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        request = urllib.request.Request(
            self.config.url.rstrip("/") + "/chat/completions", data=body, headers=headers, method="POST"
        )
        with self._opener.open(request, timeout=self.config.timeout_s) as response:
            raw = response.read(MAX_REPLY_BYTES + 1)
        if len(raw) > MAX_REPLY_BYTES:
            raise ValueError(f"invalid reply: larger than {MAX_REPLY_BYTES} bytes")
        reply = json.loads(raw.decode("utf-8"))
        content = reply["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"invalid reply: message content is {type(content).__name__}, expected text")
        return parse_reply(content)
