"""Detectors: the ``Detector`` protocol and its Ultralytics YOLO backend."""

from pipeline.detect.base import Detector
from pipeline.detect.weights import resolve_weights
from pipeline.detect.yolo import YoloDetector, select_device

__all__ = ["Detector", "YoloDetector", "resolve_weights", "select_device"]
