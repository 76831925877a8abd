"""Batched scoring of track windows with the current fusion model, and its hot reload."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from pipeline.config import FusionConfig
from pipeline.fusion.features import CUE_NAMES, TrackWindow, cue_dict, cue_vector
from pipeline.fusion.model import FusionModel, FusionSpec, stack_inputs
from pipeline.fusion.prompt import track_prompt
from pipeline.fusion.store import ModelWatcher, latest_version, load_model

logger = logging.getLogger(__name__)


def prepare(
    windows: Sequence[TrackWindow],
) -> tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.float32] | None], list[str]]:
    """Compute the cue vectors, visual vectors and prompts of ``windows``, the model's inputs.

    Training calls it too, so that a model gets the same inputs in both places.
    """
    cues = [cue_vector(window) for window in windows]
    visual = [window.visual() for window in windows]
    texts = [track_prompt(window, cue_dict(window)) for window in windows]
    return cues, visual, texts


class FusionScorer:
    """Scores many track windows per call, in chunks of ``max_batch``, on one device.

    The model comes from the newest version under ``config.model_dir`` when there is
    one, else it is built zero-shot from ``config.labels``. Labels in the config that
    the loaded model does not know are added from their descriptions. With a
    ``model_dir``, a newer version published there replaces the model between two
    calls, without a restart.
    """

    def __init__(self, config: FusionConfig, device: str = "cpu", visual_dim: int = 0) -> None:
        self.config = config
        self.device = device
        self.visual_dim = visual_dim
        self.last_timing_ms = 0.0
        folder = latest_version(config.model_dir) if config.model_dir is not None else None
        self.model = self._initial_model(folder)
        self._watcher: ModelWatcher | None = None
        if config.model_dir is not None:
            # A zero-shot model has no folder, so the watcher gets None and takes any
            # version as newer. Its version name "zero-shot" sorts after every timestamp.
            current = folder.name if folder is not None else None
            self._watcher = ModelWatcher(config.model_dir, current, device, config.reload_interval_s)

    def _initial_model(self, folder: Path | None) -> FusionModel:
        if folder is not None:
            model = load_model(folder, self.device)
        else:
            if self.config.model_dir is not None:
                logger.info(
                    "no fusion model in %s yet; scoring zero-shot until one is published",
                    self.config.model_dir,
                )
            spec = FusionSpec(
                encoder=self.config.encoder,
                cue_names=CUE_NAMES,
                labels=dict(self.config.labels),
                normal=list(self.config.normal),
                visual_dim=self.visual_dim,
            )
            model = FusionModel.build(spec, self.device)
        return self._adopt(model)

    def _adopt(self, model: FusionModel) -> FusionModel:
        """Switch off inputs the model cannot use, add the config's new labels, and log the result."""
        if model.spec.cue_names != CUE_NAMES:
            logger.warning(
                "fusion model %s was trained on other cues; its prefix is switched off", model.spec.version
            )
            model.spec.use_prefix = False
        if model.spec.visual_dim not in (0, self.visual_dim):
            logger.warning(
                "fusion model %s expects %d detector features but the detector gives %d; "
                "its visual tokens are masked out",
                model.spec.version,
                model.spec.visual_dim,
                self.visual_dim,
            )
        for name, description in self.config.labels.items():
            if name not in model.spec.labels:
                model.add_label(name, description)
        logger.info(
            "fusion model %s on %s: labels %s (%s)",
            model.spec.version,
            self.device,
            ", ".join(model.labels),
            "trained" if model.spec.use_prefix else "zero-shot",
        )
        return model

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def version(self) -> str:
        return self.model.spec.version

    def start(self) -> None:
        """Start watching ``model_dir`` for newer versions, when one is configured."""
        if self._watcher is not None:
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    def swap_if_reloaded(self) -> bool:
        """Switch to a newer model the watcher has loaded; return True when the model changed.

        Call it from the thread that scores, between two calls of ``score``.
        """
        if self._watcher is None:
            return False
        fresh = self._watcher.take()
        if fresh is not None:
            previous = self.model.spec.version
            self.model = self._adopt(fresh)
            logger.info("fusion model reloaded: %s -> %s", previous, self.model.spec.version)
            return True
        return False

    def score(self, windows: Sequence[TrackWindow]) -> list[dict[str, float]]:
        """Score each window against every label and return the scores in [0, 1], in window order."""
        self.swap_if_reloaded()
        if not windows:
            return []
        started = time.perf_counter()
        model = self.model
        visual_dim = model.spec.visual_dim if model.spec.visual_dim == self.visual_dim else 0
        scores: list[dict[str, float]] = []
        for offset in range(0, len(windows), self.config.max_batch):
            chunk = windows[offset : offset + self.config.max_batch]
            cue_rows, visual_rows, texts = prepare(chunk)
            cues, visual, present = stack_inputs(cue_rows, visual_rows, visual_dim, model.device)
            with torch.inference_mode():
                probabilities = torch.sigmoid(model(cues, texts, visual, present)).cpu().numpy()
            scores.extend(
                {label: round(float(value), 4) for label, value in zip(model.labels, row, strict=True)}
                for row in probabilities
            )
        self.last_timing_ms = (time.perf_counter() - started) * 1000
        return scores
