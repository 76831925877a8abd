"""Versioned model folders: writing them atomically, finding the newest, watching for a newer one.

A model root contains one folder per version::

    models/fusion/
      20261204-213000/
        config.json        FusionSpec, including the label descriptions
        model.safetensors  projections, label embeddings, scale, biases (+ trained encoder layers)
        labels.json        label name -> description
        metrics.json       evaluation figures from training (optional)
        data.sha256        hash of the training data (optional)

A version is written under a hidden name and renamed into place, so a reader never
sees half a model. Folder names are UTC timestamps that sort in publication order,
and the greatest name wins.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import ModelLoadError
from pipeline.fusion.model import FusionModel, FusionSpec, write_spec

logger = logging.getLogger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors")
# Version folder names as new_version_name() writes them; other folders are not versions.
VERSION_PATTERN = re.compile(r"^\d{8}-\d{6}(-\d{6})?$")


def new_version_name(now: dt.datetime | None = None) -> str:
    """Return a version folder name for ``now`` (UTC by default), down to the microsecond."""
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S-%f")


def save_model(
    model: FusionModel,
    root: Path,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    data_hash: str | None = None,
    attachments: Sequence[Path] = (),
) -> Path:
    """Write ``model`` as a new version under ``root`` and return its folder.

    ``attachments`` (plots, reports) are copied into the folder before it is published.
    """
    version = version or new_version_name()
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise FileExistsError(f"model version {final} exists already")
    partial = root / f".partial-{version}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    model.spec.version = version
    write_spec(model.spec, partial)
    save_file(model.trainable_state(), str(partial / "model.safetensors"))
    (partial / "labels.json").write_text(json.dumps(model.spec.labels, indent=2) + "\n", encoding="utf-8")
    if metrics is not None:
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if data_hash is not None:
        (partial / "data.sha256").write_text(data_hash + "\n", encoding="utf-8")
    for attachment in attachments:
        shutil.copyfile(attachment, partial / attachment.name)
    # On disk before the rename, so that a power loss cannot publish empty files.
    for written in partial.iterdir():
        with written.open("rb") as handle:
            os.fsync(handle.fileno())
    os.replace(partial, final)
    return final


def latest_version(root: Path) -> Path | None:
    """Return the newest complete version folder under ``root``, or None when there is none."""
    if not root.is_dir():
        return None
    versions = [
        entry
        for entry in root.iterdir()
        if entry.is_dir()
        and VERSION_PATTERN.match(entry.name)
        and all((entry / name).is_file() for name in REQUIRED_FILES)
    ]
    return max(versions, key=lambda entry: entry.name, default=None)


def load_model(folder: Path, device: str = "cpu") -> FusionModel:
    """Rebuild the model stored in ``folder``; the frozen encoder comes from its original source.

    Raises ``ModelLoadError`` when a file is missing or unreadable, or when the
    weights do not fit the stored config.
    """
    try:
        spec = FusionSpec.from_json(json.loads((folder / "config.json").read_text(encoding="utf-8")))
        # safetensors contains plain tensors only, so loading it runs no code.
        state = load_file(str(folder / "model.safetensors"), device="cpu")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ModelLoadError(
            f"fusion model {folder} failed to load: {exc}; republish it or remove the folder"
        ) from exc
    model = FusionModel.build(spec, device="cpu")
    # The label and bias tensors are sized by the spec's labels, which build() already used.
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        # load_state_dict raises RuntimeError when a tensor's shape differs from the model's.
        raise ModelLoadError(f"fusion model {folder}: weights do not match its config.json: {exc}") from exc
    unexpected_keys = [key for key in unexpected if not key.startswith("encoder.")]
    missing_keys = [key for key in missing if not key.startswith("encoder.")]
    if unexpected_keys or missing_keys:
        raise ModelLoadError(
            f"fusion model {folder}: weights do not match its config.json "
            f"(missing {missing_keys[:3]}, unexpected {unexpected_keys[:3]})"
        )
    model.spec.version = folder.name
    return model.to(device).eval()


def _file_state(folder: Path) -> tuple[tuple[int, int], ...]:
    """Return the size and modification time of each file of a version folder."""
    state = []
    for entry in sorted(folder.iterdir()):
        try:
            stat = entry.stat()
        except OSError:
            continue
        state.append((stat.st_size, stat.st_mtime_ns))
    return tuple(state)


class ModelWatcher:
    """Background poller of a model root that loads each newer version it finds.

    ``current`` is the version folder in use, or None for a model that was not
    loaded from ``root`` (then any version found is newer). ``take()`` returns a
    freshly loaded model once, called from the thread that uses the model, so the
    swap happens between two batches and never during one. A version that fails
    to load is tried again only when its files change (a copy that was still being
    written when it was polled) or a newer version appears.
    """

    def __init__(self, root: Path, current: str | None, device: str, interval_s: float) -> None:
        self.root = root
        self.current = current
        self.device = device
        self.interval_s = interval_s
        self._ready: FusionModel | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Version name -> size and modification time of its files when it failed.
        self._failed: dict[str, tuple[tuple[int, int], ...]] = {}
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> FusionModel | None:
        """Return the model loaded since the last call, or None when there is none."""
        with self._lock:
            model, self._ready = self._ready, None
        return model

    def check(self) -> bool:
        """Load the newest version if it is newer than the current one; True when one was loaded."""
        folder = latest_version(self.root)
        if folder is None or folder.name == self.current:
            return False
        if self._failed.get(folder.name) == _file_state(folder):
            return False
        if self.current is not None and folder.name < self.current:
            return False
        try:
            model = load_model(folder, self.device)
        except ModelLoadError as exc:
            self._failed[folder.name] = _file_state(folder)
            logger.error(  # noqa: TRY400
                "fusion model %s not loaded, keeping %s: %s",
                folder.name,
                self.current or "the current model",
                exc,
            )
            return False
        except Exception:
            # Building the model failed (out of memory, say): loading it again at every
            # poll would rebuild the whole encoder each time, so wait for a change.
            self._failed[folder.name] = _file_state(folder)
            logger.exception(
                "fusion model %s not loaded, keeping %s", folder.name, self.current or "the current model"
            )
            return False
        with self._lock:
            self._ready = model
        self.current = folder.name
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:
                logger.exception("fusion model watcher: checking %s failed", self.root)
