"""Locating, downloading and verifying the sample clips listed in ``sample_streams/manifest.yaml``."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import yaml

from pipeline.errors import SampleDataError

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_DIR = Path("~/.cache/vigil/samples").expanduser()
DOWNLOAD_TIMEOUT_S = 60


def sample_streams_dir() -> Path:
    """Return the ``sample_streams`` folder: ``$VIGIL_SAMPLE_STREAMS`` or the one beside the package."""
    override = os.environ.get("VIGIL_SAMPLE_STREAMS")
    folder = Path(override) if override else Path(__file__).resolve().parents[1] / "sample_streams"
    if not (folder / "manifest.yaml").is_file():
        raise SampleDataError(
            f"sample manifest not found at {folder / 'manifest.yaml'}; run Vigil from a checkout of the "
            "repository or set VIGIL_SAMPLE_STREAMS to its sample_streams folder"
        )
    return folder


@dataclasses.dataclass(frozen=True)
class SampleClip:
    file: str
    sha256: str
    license: str
    attribution: str
    url: str


def load_manifest(folder: Path | None = None) -> list[SampleClip]:
    path = (folder or sample_streams_dir()) / "manifest.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [SampleClip(**entry) for entry in data["clips"]]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(clip: SampleClip, target: Path) -> None:
    logger.info("downloading %s from %s", clip.file, clip.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as partial:
        try:
            with urllib.request.urlopen(clip.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, partial)
        except (OSError, http.client.HTTPException) as exc:
            Path(partial.name).unlink(missing_ok=True)
            raise SampleDataError(
                f"{clip.file} is missing and downloading it from {clip.url} failed: {exc}; "
                "copy the clips into the folder given by --data-dir or $VIGIL_SAMPLE_DIR"
            ) from exc
    Path(partial.name).replace(target)


def ensure_samples(data_dir: Path, files: list[str] | None = None, download: bool = True) -> Path:
    """Make sure each wanted clip is in ``data_dir`` with the right sha256; return ``data_dir``.

    A missing clip is downloaded when ``download`` is true. A clip whose checksum does
    not match raises, because tests and measurements on the wrong footage mislead.
    """
    clips = load_manifest()
    wanted = [clip for clip in clips if files is None or clip.file in files]
    unknown = set(files or []) - {clip.file for clip in clips}
    if unknown:
        raise SampleDataError(f"not in the sample manifest: {', '.join(sorted(unknown))}")
    for clip in wanted:
        path = data_dir / clip.file
        if not path.is_file():
            if not download:
                raise SampleDataError(f"sample clip not found: {path}")
            _download(clip, path)
        actual = file_sha256(path)
        if actual != clip.sha256:
            raise SampleDataError(
                f"{path}: sha256 is {actual}, expected {clip.sha256}; delete it and run again"
            )
    return data_dir
