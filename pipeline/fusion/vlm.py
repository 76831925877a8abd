"""Optional descriptions from a vision-language model behind an OpenAI-compatible chat endpoint.

The daemon publishes every alert at once with its template description. When a
``fusion.vlm`` endpoint is configured, each new event's snapshot and structured
fields are also sent to it by worker threads, off the frame path and with a
timeout; when the answer arrives, the event is published again with the same id,
state ``updated`` and the model's sentences under ``description.vlm_en`` and
``description.vlm_zh``. A slow, failing or absent endpoint only costs those
extra sentences.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import urllib.error
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

TextListener = Callable[[Event, dict[str, str]], None]


def event_summary(event: Event) -> dict[str, Any]:
    """The structured part of the request: what the rules already know about the event."""
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
    """Read ``{"en": ..., "zh": ...}`` from the reply; a reply that is not such JSON is English text."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {"vlm_en": content.strip()}
    if not isinstance(data, dict):
        return {"vlm_en": content.strip()}
    return {f"vlm_{key}": str(data[key]).strip() for key in ("en", "zh") if data.get(key)}


class VlmDescriber:
    """Worker threads that ask the endpoint about each submitted event and hand the text back."""

    def __init__(self, config: VlmConfig, on_text: TextListener) -> None:
        self.config = config
        self.on_text = on_text
        self._queue: queue.Queue[tuple[Event, str | None] | None] = queue.Queue(config.queue_size)
        self._threads = [
            threading.Thread(target=self._work, name=f"vlm-{index}", daemon=True)
            for index in range(config.workers)
        ]
        self.answered = 0
        self.failed = 0
        self.skipped = 0

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Ask the workers to stop after their current request; requests still queued are dropped."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break

    def submit(self, event: Event, snapshot: str | None) -> bool:
        """Queue a request; False when the queue is full and the event goes without one."""
        try:
            self._queue.put_nowait((event, snapshot))
        except queue.Full:
            self.skipped += 1
            logger.warning(
                "vision-language queue full: event %s of camera %s not described", event.id, event.camera
            )
            return False
        return True

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            event, snapshot = item
            try:
                texts = self.describe(event, snapshot)
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                self.failed += 1
                logger.warning(
                    "vision-language description of event %s (camera %s) failed: %s",
                    event.id,
                    event.camera,
                    exc,
                )
                continue
            if texts:
                self.answered += 1
                self.on_text(event, texts)

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
        """Ask the endpoint once, blocking for at most ``timeout_s``; return the description fields."""
        body = json.dumps(self._request_body(event, snapshot)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        request = urllib.request.Request(
            self.config.url.rstrip("/") + "/chat/completions", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
            reply = json.loads(response.read().decode("utf-8"))
        return parse_reply(reply["choices"][0]["message"]["content"])
