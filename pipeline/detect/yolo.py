"""Ultralytics YOLO detector backend."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from pipeline.config import DetectorConfig
from pipeline.detect.weights import PACKAGE_PREFIX, resolve_weights
from pipeline.errors import ModelLoadError
from pipeline.records import Detections

logger = logging.getLogger(__name__)


def select_device(requested: str) -> str:
    """Resolve ``auto`` to ``cuda:0`` when a CUDA GPU is visible, else ``cpu``."""
    import torch

    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"detector device {requested!r} requested, but no CUDA GPU is visible")
    return requested


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl")


def warn_if_untrusted_pickle(reference: str, resolved: str, trusted_dir: Path | None) -> bool:
    """Log a warning when ``resolved`` is a pickled checkpoint from outside a trusted place; True if it warned.

    Ultralytics loads ``.pt`` files with pickle, which can run code stored in the
    file. Files inside an installed package (``package:``) or under ``trusted_dir``
    are taken as trusted; safetensors, ONNX and other plain formats run no code.
    """
    path = Path(resolved)
    if (
        reference.startswith(PACKAGE_PREFIX)
        or path.suffix.lower() not in PICKLE_SUFFIXES
        or not path.exists()
    ):
        return False
    if trusted_dir is not None and path.resolve().is_relative_to(trusted_dir.resolve()):
        return False
    logger.warning(
        "detector weights %s are a pickled checkpoint from outside the model folder: loading it runs code "
        "stored in the file. Load only files you trust, and put your own under detector.trusted_dir.",
        path,
    )
    return True


class YoloDetector:
    """Runs one Ultralytics model over a batch of frames per call.

    ``last_timing_ms`` is the milliseconds spent in the last call, measured after the
    GPU finished, so it is the real cost of the batch.
    """

    def __init__(self, config: DetectorConfig) -> None:
        from ultralytics import YOLO

        self.config = config
        self.device = select_device(config.device)
        self.half = config.half if config.half is not None else self.device.startswith("cuda")
        weights = resolve_weights(config.weights)
        warn_if_untrusted_pickle(config.weights, weights, config.trusted_dir)
        try:
            self._model = YOLO(weights, task="detect")
        except Exception as exc:
            raise ModelLoadError(f"cannot load detector weights {config.weights!r}: {exc}") from exc
        self.names: dict[int, str] = {int(k): str(v) for k, v in self._model.names.items()}
        self._class_ids = self._resolve_classes(config.classes)
        self.last_timing_ms = 0.0
        self._cpu_threads = config.cpu_threads or os.cpu_count() or 1
        self._feature_maps: list[torch.Tensor] | None = None
        self._strides: list[float] = []
        self.feature_dim = 0
        if config.box_features:
            self._capture_neck()
        logger.info(
            "detector loaded: %s on %s (half=%s, imgsz=%d, classes=%s)",
            config.weights,
            self.device,
            self.half,
            config.imgsz,
            ", ".join(self.names[i] for i in self._class_ids) if self._class_ids else "all",
        )

    def _capture_neck(self) -> None:
        """Keep the feature maps that enter the detection head, to pool a feature vector per box.

        The fusion model uses these vectors as the visual part of each track, so the
        image is looked at once, by the detector, and not again by a second network.
        """
        head = self._model.model.model[-1]  # type: ignore[union-attr]
        strides = getattr(head, "stride", None)
        channels = [int(layer[0].conv.in_channels) for layer in getattr(head, "cv2", [])]
        if strides is None or len(channels) != len(strides):
            logger.warning("detector head %s has no per-level features; box features are off", type(head))
            return

        def keep_inputs(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            self._feature_maps = [level.detach() for level in args[0]]

        head.register_forward_pre_hook(keep_inputs)
        self._strides = [float(s) for s in strides]
        self.feature_dim = sum(channels)

    def _pool_boxes(
        self, shapes: list[tuple[int, int]], boxes: list[npt.NDArray[np.float32]]
    ) -> list[npt.NDArray[np.float32] | None]:
        """Average each level's feature map inside each box (RoIAlign) and join the levels."""
        maps, self._feature_maps = self._feature_maps, None
        if maps is None or not self._strides:
            return [None] * len(boxes)
        from torchvision.ops import roi_align

        input_h = maps[0].shape[2] * self._strides[0]
        input_w = maps[0].shape[3] * self._strides[0]
        rois = []
        for index, ((height, width), xyxy) in enumerate(zip(shapes, boxes, strict=True)):
            # Undo the letterbox: scale to fit, then centre with padding.
            ratio = min(input_h / height, input_w / width)
            pad_x = round((input_w - round(width * ratio)) / 2 - 0.1)
            pad_y = round((input_h - round(height * ratio)) / 2 - 0.1)
            mapped = xyxy * ratio + np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
            rois.append(np.concatenate([np.full((len(xyxy), 1), index, np.float32), mapped], axis=1))
        all_rois = torch.from_numpy(np.concatenate(rois)).to(maps[0].device)
        if len(all_rois) == 0:
            return [np.zeros((0, self.feature_dim), np.float32) for _ in boxes]
        pooled = [
            roi_align(level.float(), all_rois, output_size=1, spatial_scale=1 / stride, aligned=True)
            for level, stride in zip(maps, self._strides, strict=True)
        ]
        joined = torch.cat(pooled, dim=1).flatten(1).cpu().numpy()
        return np.split(joined, np.cumsum([len(xyxy) for xyxy in boxes])[:-1])

    def _resolve_classes(self, wanted: list[str] | None) -> list[int] | None:
        if wanted is None:
            return None
        by_name = {name: class_id for class_id, name in self.names.items()}
        unknown = [name for name in wanted if name not in by_name]
        if unknown:
            raise ModelLoadError(
                f"detector.classes: {', '.join(unknown)} not among the model's classes: {', '.join(by_name)}"
            )
        return [by_name[name] for name in wanted]

    def warm_up(self, height: int = 480, width: int = 640) -> None:
        """Run one blank batch so the first real frame does not pay for initialisation."""
        self.detect_batch([np.zeros((height, width, 3), dtype=np.uint8)])

    def detect_batch(self, images: Sequence[npt.NDArray[np.uint8]]) -> list[Detections]:
        if not images:
            return []
        started = time.perf_counter()
        if self.device == "cpu" and torch.get_num_threads() != self._cpu_threads:
            # Ultralytics 8.4 sets torch to cpu_count - 1 threads when it selects the CPU,
            # which on a 2-core machine halves inference speed.
            torch.set_num_threads(self._cpu_threads)
        results = self._model.predict(
            list(images),
            imgsz=self.config.imgsz,
            conf=self.config.conf,
            iou=self.config.iou,
            classes=self._class_ids,
            device=self.device,
            quantize=16 if self.half else None,
            agnostic_nms=self.config.agnostic_nms,
            verbose=False,
        )
        found = [result.boxes.cpu().numpy() for result in cast("list[Any]", results)]
        features = self._pool_boxes([image.shape[:2] for image in images], [boxes.xyxy for boxes in found])
        detections = [
            Detections.from_arrays(boxes.xyxy, boxes.conf, boxes.cls, self.names, features=vectors)
            for boxes, vectors in zip(found, features, strict=True)
        ]
        # .cpu() above waits for the GPU, so this interval covers the whole batch.
        self.last_timing_ms = (time.perf_counter() - started) * 1000
        return detections
