"""Importers for annotated footage: event CSV, CVAT for video 1.1, MOTChallenge and YOLO.

Each importer reads one source into an :class:`ImportResult` of typed records. Two kinds of
label come out: :class:`Segment` (an event between two times in a video) and
:class:`BoxAnnotation` (a box on one frame, in pixels, with frames numbered from 0).

Every importer takes the same two options:

``label_map``
    Maps source labels to Vigil labels. When given, rows whose label is not a key are
    left out and counted in ``ImportResult.unmapped``. When omitted, labels are kept.
``skip_bad``
    When false (the default), any invalid row raises :class:`AnnotationError`, which lists
    every invalid row of the source, not only the first. When true, the valid rows are
    returned and the invalid ones are listed in ``ImportResult.problems``.

Problems with a whole file (a wrong CSV header, malformed XML, a DTD) raise
:class:`AnnotationError` even when ``skip_bad`` is true, because no row of it can be trusted.
A missing file raises ``FileNotFoundError``. Invalid arguments (an image size that is not
positive, for example) raise ``ValueError``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from xml.etree import ElementTree as ET
from xml.parsers import expat

from pipeline.errors import VigilError

log = logging.getLogger(__name__)

EVENT_CSV_COLUMNS = ("video", "label", "start_s", "end_s")
MOT_DEFAULT_CLASS_NAMES: Mapping[int, str] = {1: "person"}
# Problems listed in an AnnotationError's message. Its ``problems`` attribute contains all of them.
MAX_PROBLEMS_IN_MESSAGE = 50
# Shapes CVAT can put in a track besides boxes. They are counted in ``ignored``.
CVAT_OTHER_SHAPES = frozenset({"polygon", "polyline", "points", "ellipse", "cuboid", "skeleton", "mask"})
# A class list that some YOLO tools write beside the label files. It names no frame.
YOLO_CLASS_LIST_FILES = frozenset({"classes.txt"})

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Segment:
    """A temporal event: ``label`` applies to ``video`` from ``start_s`` to ``end_s`` seconds."""

    video: str
    label: str
    start_s: float
    end_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start_s) and math.isfinite(self.end_s)):
            raise ValueError(f"segment times must be finite, got {self.start_s} to {self.end_s}")
        if self.start_s < 0:
            raise ValueError(f"segment start_s must be at least 0, got {self.start_s}")
        if self.end_s < self.start_s:
            raise ValueError(f"segment end_s ({self.end_s}) is before start_s ({self.start_s})")

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class BoxAnnotation:
    """A labelled box on one frame of ``video``.

    ``frame`` counts from 0 whatever the source's convention. ``xyxy`` is
    (x1, y1, x2, y2) in pixels with x2 > x1 and y2 > y1. ``track_id`` is None when the
    source has no identities (YOLO). ``outside`` marks the frame where a CVAT track has
    left the view, and its box is then not an object on that frame.
    """

    video: str
    frame: int
    track_id: int | None
    label: str
    xyxy: tuple[float, float, float, float]
    outside: bool = False
    attributes: dict[str, str] = field(default_factory=dict)
    occluded: bool = False

    def __post_init__(self) -> None:
        if self.frame < 0:
            raise ValueError(f"box frame must be at least 0, got {self.frame}")
        if len(self.xyxy) != 4:
            raise ValueError(f"box xyxy must have 4 values, got {len(self.xyxy)}")
        x1, y1, x2, y2 = self.xyxy
        if not all(math.isfinite(value) for value in self.xyxy):
            raise ValueError(f"box xyxy must be finite, got {self.xyxy}")
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"box xyxy must have x2 > x1 and y2 > y1, got {self.xyxy}")


@dataclass(frozen=True, slots=True)
class RowProblem:
    """An invalid row. ``line`` is the 1-based line in ``file``, or 0 for the whole file."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The records and problems of one import.

    ``unmapped`` counts valid rows left out because their label is not in the label map.
    ``ignored`` counts rows the format marks as not to be used (MOT rows with conf 0) and
    CVAT shapes other than boxes.
    """

    segments: list[Segment] = field(default_factory=list)
    boxes: list[BoxAnnotation] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    unmapped: int = 0
    ignored: int = 0

    @property
    def skipped(self) -> int:
        """Number of invalid rows (or label files) left out."""
        return len(self.problems)


class AnnotationError(VigilError):
    """Invalid annotations. ``problems`` lists every invalid row found."""

    def __init__(self, problems: list[RowProblem]) -> None:
        self.problems = problems
        shown = [str(problem) for problem in problems[:MAX_PROBLEMS_IN_MESSAGE]]
        hidden = len(problems) - len(shown)
        if hidden > 0:
            shown.append(f"... and {hidden} more")
        super().__init__(
            f"{len(problems)} invalid annotation row(s):\n  "
            + "\n  ".join(shown)
            + "\nFix the rows, or import the valid rows only (vigil train or eval --skip-bad-rows, or data.skip_bad_rows: true)."
        )


def segments_for(result: ImportResult, video: str) -> list[Segment]:
    """Return the segments of ``video``, in file order."""
    return [segment for segment in result.segments if segment.video == video]


def boxes_for(result: ImportResult, video: str, frame: int | None = None) -> list[BoxAnnotation]:
    """Return the boxes of ``video``, of one 0-based ``frame`` when given, in import order."""
    return [box for box in result.boxes if box.video == video and (frame is None or box.frame == frame)]


# ---------------------------------------------------------------- shared helpers


class _Collector:
    """Records and problems of one import in progress. ``finish`` returns them or raises."""

    def __init__(self, label_map: Mapping[str, str] | None) -> None:
        self.label_map = label_map
        self.segments: list[Segment] = []
        self.boxes: list[BoxAnnotation] = []
        self.problems: list[RowProblem] = []
        self.unmapped = 0
        self.ignored = 0

    def map_label(self, label: str) -> str | None:
        """Return the Vigil label for ``label``, or None (and count it) when the map lacks it."""
        if self.label_map is None:
            return label
        mapped = self.label_map.get(label)
        if mapped is None:
            self.unmapped += 1
        return mapped

    def problem(self, file: str, line: int, reasons: list[str]) -> None:
        self.problems.append(RowProblem(file, line, "; ".join(reasons)))

    def finish(self, source: str, skip_bad: bool) -> ImportResult:
        if self.problems and not skip_bad:
            raise AnnotationError(self.problems)
        if self.problems:
            log.warning("skipped %d invalid annotation row(s) in %s", len(self.problems), source)
        return ImportResult(self.segments, self.boxes, self.problems, self.unmapped, self.ignored)


def _fail(file: str, line: int, reason: str) -> NoReturn:
    raise AnnotationError([RowProblem(file, line, reason)])


def _read_text(path: Path) -> str:
    """Read a UTF-8 file, with or without a byte-order mark. An invalid byte raises with its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        _fail(str(path), line, f"not valid UTF-8 ({error.reason} at byte {error.start})")


def _parse_float(name: str, text: str, reasons: list[str]) -> float | None:
    """Parse a finite float, or append a reason naming the field and return None."""
    if text == "":
        reasons.append(f"missing {name}")
        return None
    try:
        value = float(text)
    except ValueError:
        reasons.append(f"{name} is not a number: {text!r}")
        return None
    if not math.isfinite(value):
        reasons.append(f"{name} is not finite: {text!r}")
        return None
    return value


def _parse_int(name: str, text: str, reasons: list[str]) -> int | None:
    if text == "":
        reasons.append(f"missing {name}")
        return None
    try:
        return int(text)
    except ValueError:
        reasons.append(f"{name} is not an integer: {text!r}")
        return None


# ---------------------------------------------------------------- event CSV


def import_event_csv(
    path: PathLike, label_map: Mapping[str, str] | None = None, skip_bad: bool = False
) -> ImportResult:
    """Import temporal events from a CSV with the header ``video,label,start_s,end_s``.

    Columns may come in any order, but all four must be present and no others. Times are
    seconds from the start of the video. A row is invalid when a field is missing, a
    time is not a finite number or is negative, or start_s is after end_s. Blank lines
    are skipped. Line numbers in problems count the header as line 1.
    """
    path = Path(path)
    file = str(path)
    collector = _Collector(label_map)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))

    header = next(reader, None)
    if header is None:
        _fail(file, 0, f"the file is empty; expected the header {','.join(EVENT_CSV_COLUMNS)}")
    columns = [name.strip() for name in header]
    missing = [name for name in EVENT_CSV_COLUMNS if name not in columns]
    unknown = [name for name in columns if name not in EVENT_CSV_COLUMNS]
    if missing or unknown or len(set(columns)) != len(columns):
        _fail(
            file,
            1,
            f"header is {','.join(columns)!r}; expected the columns {','.join(EVENT_CSV_COLUMNS)}"
            " once each, in any order",
        )
    index = {name: columns.index(name) for name in EVENT_CSV_COLUMNS}

    # csv.reader.line_num is the last line read, so a row starts one line after the previous row ended.
    row_start = reader.line_num + 1
    for row in reader:
        line = row_start
        row_start = reader.line_num + 1
        if not row or all(value.strip() == "" for value in row):
            continue
        segment = _event_row(row, index, len(columns), file, line, collector)
        if segment is not None:
            collector.segments.append(segment)
    return collector.finish(file, skip_bad)


def _event_row(
    row: list[str], index: dict[str, int], width: int, file: str, line: int, collector: _Collector
) -> Segment | None:
    if len(row) > width:
        collector.problem(file, line, [f"{len(row)} fields, expected {width}"])
        return None
    values = {name: row[i].strip() if i < len(row) else "" for name, i in index.items()}

    reasons: list[str] = []
    for name in ("video", "label"):
        if values[name] == "":
            reasons.append(f"missing {name}")
    start_s = _parse_float("start_s", values["start_s"], reasons)
    end_s = _parse_float("end_s", values["end_s"], reasons)
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is not None and value < 0:
            reasons.append(f"{name} is negative: {value}")
    if start_s is not None and end_s is not None and start_s > end_s:
        reasons.append(f"start_s ({start_s}) is after end_s ({end_s})")
    if reasons or start_s is None or end_s is None:
        collector.problem(file, line, reasons)
        return None

    label = collector.map_label(values["label"])
    if label is None:
        return None
    return Segment(values["video"], label, start_s, end_s)


# ---------------------------------------------------------------- CVAT for video 1.1


class _RejectedXml(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _parse_xml(path: Path) -> tuple[ET.Element, dict[ET.Element, int]]:
    """Parse XML into an element tree and the line on which each element starts.

    Any DOCTYPE or entity declaration is rejected, so that entity expansion (the
    "billion laughs" attack) and external entities cannot happen.
    """
    file = str(path)
    parser = expat.ParserCreate()
    lines: dict[ET.Element, int] = {}
    stack: list[ET.Element] = []
    texts: list[list[str]] = []
    root: list[ET.Element] = []

    def start(tag: str, attributes: dict[str, str]) -> None:
        element = ET.Element(tag, attributes)
        lines[element] = parser.CurrentLineNumber
        if stack:
            stack[-1].append(element)
        else:
            root.append(element)
        stack.append(element)
        texts.append([])

    def end(tag: str) -> None:
        element = stack.pop()
        element.text = "".join(texts.pop())

    def text(data: str) -> None:
        if texts:
            texts[-1].append(data)

    def reject_dtd(*_: object) -> None:
        raise _RejectedXml(parser.CurrentLineNumber, "DOCTYPE and ENTITY declarations are not allowed")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = reject_dtd
    parser.EntityDeclHandler = reject_dtd

    try:
        parser.Parse(path.read_bytes(), True)
    except _RejectedXml as error:
        _fail(file, error.line, error.reason)
    except expat.ExpatError as error:
        _fail(file, error.lineno, f"malformed XML: {expat.ErrorString(error.code)} at column {error.offset}")
    return root[0], lines


def import_cvat_video(
    path: PathLike, label_map: Mapping[str, str] | None = None, skip_bad: bool = False
) -> ImportResult:
    """Import boxes from a CVAT "for video 1.1" XML export.

    The video name is ``meta/task/source`` (or ``meta/job/source``), else the file's stem.
    Frames are CVAT's, which already count from 0. Every box of every track is kept,
    interpolated ones included, and boxes marked ``outside`` are kept with
    ``outside=True``. A box is invalid when its frame is missing, a coordinate is not a
    number, xbr <= xtl or ybr <= ytl, its track already has a box on that frame, or (when
    ``original_size`` is given) it lies entirely outside the frame. Problems give the line
    of the offending element. Shapes other than boxes are counted in ``ignored``.
    """
    path = Path(path)
    file = str(path)
    root, lines = _parse_xml(path)
    if root.tag != "annotations":
        _fail(file, lines[root], f"root element is <{root.tag}>; expected <annotations>")
    if root.find("image") is not None and root.find("track") is None:
        _fail(
            file, lines[root], 'this is a "CVAT for images" export; export the task as "CVAT for video 1.1"'
        )

    task = _cvat_task(root)
    source = task.findtext("source") if task is not None else None
    video = source.strip() if source and source.strip() else path.stem
    size = _cvat_size(task, file, lines)

    collector = _Collector(label_map)
    for child in root:
        if child.tag == "track":
            _cvat_track(child, video, size, file, lines, collector)
        elif child.tag == "tag":
            collector.ignored += 1
    if collector.ignored:
        log.info("%s: ignored %d CVAT shape(s) and tag(s) that are not boxes", file, collector.ignored)
    return collector.finish(file, skip_bad)


def _cvat_task(root: ET.Element) -> ET.Element | None:
    meta = root.find("meta")
    if meta is None:
        return None
    for tag in ("task", "job"):
        task = meta.find(tag)
        if task is not None:
            return task
    return None


def _cvat_size(task: ET.Element | None, file: str, lines: dict[ET.Element, int]) -> tuple[int, int] | None:
    """Return (width, height) from ``original_size``, or None when absent. An invalid size raises."""
    if task is None:
        return None
    element = task.find("original_size")
    if element is None:
        return None
    reasons: list[str] = []
    width = _parse_int("width", (element.findtext("width") or "").strip(), reasons)
    height = _parse_int("height", (element.findtext("height") or "").strip(), reasons)
    if width is None or height is None or width <= 0 or height <= 0:
        _fail(
            file,
            lines[element],
            "invalid original_size: " + ("; ".join(reasons) or "width and height must be positive"),
        )
    return width, height


def _cvat_track(
    track: ET.Element,
    video: str,
    size: tuple[int, int] | None,
    file: str,
    lines: dict[ET.Element, int],
    collector: _Collector,
) -> None:
    reasons: list[str] = []
    track_id = _parse_int("track id", track.get("id", "").strip(), reasons)
    source_label = track.get("label", "").strip()
    if source_label == "":
        reasons.append("missing track label")
    if reasons or track_id is None:
        collector.problem(file, lines[track], reasons)
        return

    frames_seen: set[int] = set()
    for shape in track:
        if shape.tag in CVAT_OTHER_SHAPES:
            collector.ignored += 1
            continue
        if shape.tag != "box":
            continue
        line = lines[shape]
        parsed = _cvat_box(shape, size, frames_seen, track_id, file, line, collector)
        if parsed is None:
            continue
        label = collector.map_label(source_label)
        if label is None:
            continue
        frame, xyxy, flags, attributes = parsed
        collector.boxes.append(
            BoxAnnotation(
                video, frame, track_id, label, xyxy, flags["outside"], attributes, flags["occluded"]
            )
        )


def _cvat_box(
    box: ET.Element,
    size: tuple[int, int] | None,
    frames_seen: set[int],
    track_id: int,
    file: str,
    line: int,
    collector: _Collector,
) -> tuple[int, tuple[float, float, float, float], dict[str, bool], dict[str, str]] | None:
    """Validate one <box> and return (frame, xyxy, flags, attributes), or record a problem and return None."""
    reasons: list[str] = []
    frame = _parse_int("frame", box.get("frame", "").strip(), reasons)
    if frame is not None and frame < 0:
        reasons.append(f"frame is negative: {frame}")
    elif frame is not None and frame in frames_seen:
        reasons.append(f"track {track_id} already has a box on frame {frame}")

    coords = [_parse_float(name, box.get(name, "").strip(), reasons) for name in ("xtl", "ytl", "xbr", "ybr")]
    xtl, ytl, xbr, ybr = coords
    if xtl is not None and xbr is not None and xbr <= xtl:
        reasons.append(f"xbr ({xbr}) is not greater than xtl ({xtl})")
    if ytl is not None and ybr is not None and ybr <= ytl:
        reasons.append(f"ybr ({ybr}) is not greater than ytl ({ytl})")

    flags: dict[str, bool] = {}
    for name in ("outside", "occluded"):
        value = box.get(name, "0").strip()
        if value not in ("0", "1"):
            reasons.append(f"{name} must be 0 or 1, got {value!r}")
        flags[name] = value == "1"

    attributes: dict[str, str] = {}
    for attribute in box.iter("attribute"):
        name = attribute.get("name", "").strip()
        if name == "":
            reasons.append("an <attribute> has no name")
        elif name in attributes:
            reasons.append(f"attribute {name!r} appears twice")
        else:
            attributes[name] = (attribute.text or "").strip()

    if reasons or frame is None or xtl is None or ytl is None or xbr is None or ybr is None:
        collector.problem(file, line, reasons)
        return None

    # An outside box keeps the track's last position, so only visible boxes must overlap the frame.
    if size is not None and not flags["outside"]:
        width, height = size
        if xbr <= 0 or ybr <= 0 or xtl >= width or ytl >= height:
            reason = f"box ({xtl}, {ytl}, {xbr}, {ybr}) lies entirely outside the {width}x{height} frame"
            collector.problem(file, line, [reason])
            return None
    frames_seen.add(frame)
    return frame, (xtl, ytl, xbr, ybr), flags, attributes


# ---------------------------------------------------------------- MOTChallenge


def import_mot(
    path: PathLike,
    video: str,
    label_map: Mapping[str, str] | None = None,
    skip_bad: bool = False,
    class_names: Mapping[int, str] = MOT_DEFAULT_CLASS_NAMES,
) -> ImportResult:
    """Import boxes from a MOTChallenge ``gt.txt``.

    Rows are ``frame,id,bb_left,bb_top,bb_width,bb_height[,conf[,class[,visibility]]]``
    with pixel coordinates. MOT frames count from 1, and the boxes returned count from 0
    (MOT frame 1 is frame 0). Rows with conf 0 are marked "do not use" by the format and
    are counted in ``ignored``. The class id is looked up in ``class_names``, and rows
    without a class column are class 1. An id of -1 means no identity (``track_id`` None).
    The visibility, when present, is kept as the ``visibility`` attribute.

    A row is invalid when it has fewer than 6 fields, a number does not parse, the frame
    is below 1, the width or height is not positive, or the class id is not in
    ``class_names``.
    """
    # NOTE: column 8 is read as the class, as CVAT's MOT export writes it. The 10-column
    # layout on motchallenge.net/instructions puts world x (-1) there instead, so such files
    # need class_names={-1: "person"}.
    path = Path(path)
    file = str(path)
    collector = _Collector(label_map)
    for line, text in enumerate(_read_text(path).splitlines(), start=1):
        if text.strip() == "":
            continue
        fields = [value.strip() for value in text.split(",")]
        box = _mot_row(fields, video, class_names, file, line, collector)
        if box is not None:
            collector.boxes.append(box)
    return collector.finish(file, skip_bad)


def _mot_row(
    fields: list[str],
    video: str,
    class_names: Mapping[int, str],
    file: str,
    line: int,
    collector: _Collector,
) -> BoxAnnotation | None:
    if len(fields) < 6:
        collector.problem(file, line, [f"{len(fields)} fields, expected at least 6"])
        return None

    reasons: list[str] = []
    frame = _parse_int("frame", fields[0], reasons)
    track_id = _parse_int("id", fields[1], reasons)
    left = _parse_float("bb_left", fields[2], reasons)
    top = _parse_float("bb_top", fields[3], reasons)
    width = _parse_float("bb_width", fields[4], reasons)
    height = _parse_float("bb_height", fields[5], reasons)
    conf = _parse_float("conf", fields[6], reasons) if len(fields) > 6 else 1.0
    class_id = _parse_int("class", fields[7], reasons) if len(fields) > 7 else 1
    visibility = _parse_float("visibility", fields[8], reasons) if len(fields) > 8 else None

    if frame is not None and frame < 1:
        reasons.append(f"frame must be at least 1 (MOT frames count from 1), got {frame}")
    if width is not None and width <= 0:
        reasons.append(f"bb_width must be positive, got {width}")
    if height is not None and height <= 0:
        reasons.append(f"bb_height must be positive, got {height}")
    if visibility is not None and not 0 <= visibility <= 1:
        reasons.append(f"visibility must be between 0 and 1, got {visibility}")
    if conf == 0:
        # Ignored rows skip the class check, so classes the caller did not name (occluders, say) pass.
        if not reasons:
            collector.ignored += 1
            return None
    elif class_id is not None and class_id not in class_names:
        known = ", ".join(str(key) for key in sorted(class_names))
        reasons.append(f"unknown class id {class_id}; class_names has {known}")

    if (
        reasons
        or frame is None
        or track_id is None
        or left is None
        or top is None
        or width is None
        or height is None
        or class_id is None
    ):
        collector.problem(file, line, reasons)
        return None

    label = collector.map_label(class_names[class_id])
    if label is None:
        return None
    attributes = {"visibility": fields[8]} if visibility is not None else {}
    return BoxAnnotation(
        video,
        frame - 1,
        None if track_id == -1 else track_id,
        label,
        (left, top, left + width, top + height),
        attributes=attributes,
    )


# ---------------------------------------------------------------- YOLO


def import_yolo(
    labels_dir: PathLike,
    video: str,
    class_names: Sequence[str],
    image_size: tuple[int, int],
    label_map: Mapping[str, str] | None = None,
    skip_bad: bool = False,
) -> ImportResult:
    """Import boxes from a folder of YOLO label files, one file per frame.

    The frame number is the integer at the end of the file's stem (``clip_000042.txt``
    and ``42.txt`` are both frame 42), taken as given. Each row is
    ``class cx cy w h``, with the centre and size as fractions (0 to 1) of
    ``image_size`` = (width, height) in pixels. Boxes are converted to pixel xyxy and
    clipped to the image, so that rounding in the source cannot put an edge past it.
    An empty file is a frame without objects. ``classes.txt`` is not a label file and is
    skipped. Boxes are returned sorted by frame.

    A row is invalid when it does not have 5 fields, a value does not parse, a value is
    outside 0 to 1, w or h is 0, or the class id is not an index of ``class_names``. A
    file is invalid when its stem has no trailing integer or another file has the same
    frame, and its problem has line 0.
    """
    image_width, image_height = image_size
    if image_width <= 0 or image_height <= 0:
        raise ValueError(f"image_size must be a positive (width, height), got {image_size}")
    if not class_names:
        raise ValueError("class_names is empty; pass the class names in the order of their ids")
    folder = Path(labels_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"YOLO labels folder not found: {folder}")
    files = sorted(file for file in folder.glob("*.txt") if file.name not in YOLO_CLASS_LIST_FILES)
    if not files:
        _fail(str(folder), 0, "no .txt label files in the folder")

    collector = _Collector(label_map)
    for file, frame in _yolo_frames(files, collector):
        for line, text in enumerate(_read_text(file).splitlines(), start=1):
            if text.strip() == "":
                continue
            box = _yolo_row(text.split(), video, frame, class_names, image_size, str(file), line, collector)
            if box is not None:
                collector.boxes.append(box)

    collector.boxes.sort(key=lambda box: box.frame)
    return collector.finish(str(folder), skip_bad)


_YOLO_FRAME = re.compile(r"\d+$")


def _yolo_frames(files: list[Path], collector: _Collector) -> Iterator[tuple[Path, int]]:
    """Yield (file, frame) for the label files whose frame number is valid and not yet taken."""
    frames: dict[int, Path] = {}
    for file in files:
        match = _YOLO_FRAME.search(file.stem)
        if match is None:
            collector.problem(str(file), 0, ["the file name has no frame number at the end of its stem"])
            continue
        frame = int(match.group())
        if frame in frames:
            collector.problem(str(file), 0, [f"frame {frame} is also labelled by {frames[frame].name}"])
            continue
        frames[frame] = file
        yield file, frame


def _yolo_row(
    fields: list[str],
    video: str,
    frame: int,
    class_names: Sequence[str],
    image_size: tuple[int, int],
    file: str,
    line: int,
    collector: _Collector,
) -> BoxAnnotation | None:
    if len(fields) != 5:
        collector.problem(file, line, [f"{len(fields)} fields, expected 5 (class cx cy w h)"])
        return None

    reasons: list[str] = []
    class_id = _parse_int("class", fields[0], reasons)
    if class_id is not None and not 0 <= class_id < len(class_names):
        reasons.append(f"unknown class id {class_id}; class_names has ids 0 to {len(class_names) - 1}")
    values: list[float] = []
    for name, text in zip(("cx", "cy", "w", "h"), fields[1:], strict=True):
        value = _parse_float(name, text, reasons)
        if value is None:
            continue
        if not 0 <= value <= 1:
            reasons.append(f"{name} must be between 0 and 1, got {value}")
        elif name in ("w", "h") and value == 0:
            reasons.append(f"{name} must be greater than 0")
        values.append(value)
    if reasons or class_id is None:
        collector.problem(file, line, reasons)
        return None

    label = collector.map_label(class_names[class_id])
    if label is None:
        return None
    cx, cy, w, h = values
    width, height = image_size
    x1 = max(0.0, (cx - w / 2) * width)
    y1 = max(0.0, (cy - h / 2) * height)
    x2 = min(float(width), (cx + w / 2) * width)
    y2 = min(float(height), (cy + h / 2) * height)
    if x2 <= x1 or y2 <= y1:
        collector.problem(file, line, [f"box is too small to convert to pixels: {' '.join(fields)}"])
        return None
    return BoxAnnotation(video, frame, None, label, (x1, y1, x2, y2))
