"""Pieces every benchmark shares: offline settings and the command-line parser with ``--data-dir``."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def set_offline_defaults() -> None:
    """Keep Ultralytics and transformers off the network, and Ultralytics' settings file out of $HOME.

    Call it before anything imports Ultralytics or transformers. Values already in the
    environment win.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="vigil-bench-"))


def bench_parser(description: str | None) -> argparse.ArgumentParser:
    """Return a parser that shows ``description`` as written and takes ``--data-dir``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("VIGIL_SAMPLE_DIR", "../shared/data")),
        help="folder of the sample footage (default: $VIGIL_SAMPLE_DIR, else ../shared/data)",
    )
    return parser
