"""Annotation importers: good files import, every invalid row is named, label maps apply."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import VigilError
from training.importers import (
    AnnotationError,
    BoxAnnotation,
    RowProblem,
    Segment,
    boxes_for,
    import_cvat_video,
    import_event_csv,
    import_mot,
    import_yolo,
    segments_for,
)

FALL_MAP = {"Falling (FW)": "fall", "Falling (BW)": "fall", "Falling (SW)": "fall"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def raised_problems(call: Callable[..., object], *args: object, **kwargs: object) -> list[RowProblem]:
    """Call ``call`` expecting an AnnotationError and return its problems."""
    with pytest.raises(AnnotationError) as caught:
        call(*args, **kwargs)
    return caught.value.problems


# ---------------------------------------------------------------- records


def test_row_problem_formats_file_line() -> None:
    assert str(RowProblem("a.csv", 3, "missing label")) == "a.csv:3: missing label"
    assert str(RowProblem("labels", 0, "no files")) == "labels: no files"


def test_annotation_error_lists_problems() -> None:
    error = AnnotationError([RowProblem("a.csv", 2, "bad start"), RowProblem("a.csv", 5, "bad end")])
    assert isinstance(error, VigilError)
    assert "a.csv:2: bad start" in str(error)
    assert "a.csv:5: bad end" in str(error)
    assert "--skip-bad-rows" in str(error)


def test_annotation_error_caps_message() -> None:
    problems = [RowProblem("a.csv", line, "bad") for line in range(2, 102)]
    error = AnnotationError(problems)
    assert len(error.problems) == 100
    assert "a.csv:51: bad" in str(error)
    assert "a.csv:52: bad" not in str(error)
    assert "and 50 more" in str(error)


def test_records_reject_invalid_values() -> None:
    with pytest.raises(ValueError, match="before start_s"):
        Segment("v.mp4", "fall", 3.0, 1.0)
    with pytest.raises(ValueError, match="x2 > x1"):
        BoxAnnotation("v.mp4", 0, 1, "person", (10.0, 0.0, 5.0, 5.0))
    with pytest.raises(ValueError, match="frame"):
        BoxAnnotation("v.mp4", -1, 1, "person", (0.0, 0.0, 5.0, 5.0))


# ---------------------------------------------------------------- event CSV


def test_event_csv_imports_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        "video,label,start_s,end_s\na.mp4,Walking,0,2.5\n\nb.mp4, Falling (SW) ,1.5,4\nb.mp4,Standing,2,2\n",
    )
    result = import_event_csv(path)
    assert result.segments == [
        Segment("a.mp4", "Walking", 0.0, 2.5),
        Segment("b.mp4", "Falling (SW)", 1.5, 4.0),
        Segment("b.mp4", "Standing", 2.0, 2.0),
    ]
    assert result.skipped == 0
    assert result.unmapped == 0
    assert segments_for(result, "b.mp4")[0].label == "Falling (SW)"


def test_event_csv_columns_any_order(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "\ufeffstart_s,end_s,video,label\n1,2,a.mp4,Walking\n")
    result = import_event_csv(path)
    assert result.segments == [Segment("a.mp4", "Walking", 1.0, 2.0)]


BAD_EVENTS = (
    "video,label,start_s,end_s\n"
    "a.mp4,Walking,0,2\n"  # line 2, valid
    "a.mp4,,0,2\n"  # line 3
    "a.mp4,Sitting,abc,2\n"  # line 4
    "a.mp4,Sitting,-1,2\n"  # line 5
    "a.mp4,Sitting,9.7,3\n"  # line 6, a typo found in the raw GMDCSA24 notes
    "a.mp4,Sitting,1\n"  # line 7
    "a.mp4,Sitting,1,2,3\n"  # line 8
    "a.mp4,Sitting,nan,2\n"  # line 9
    "b.mp4,Standing,0,1\n"  # line 10, valid
)


def test_event_csv_raises_every_bad_row(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", BAD_EVENTS)
    problems = raised_problems(import_event_csv, path)
    assert [problem.line for problem in problems] == [3, 4, 5, 6, 7, 8, 9]
    assert all(problem.file == str(path) for problem in problems)
    reasons = [problem.reason for problem in problems]
    assert reasons[0] == "missing label"
    assert reasons[1] == "start_s is not a number: 'abc'"
    assert reasons[2] == "start_s is negative: -1.0"
    assert reasons[3] == "start_s (9.7) is after end_s (3.0)"
    assert reasons[4] == "missing end_s"
    assert reasons[5] == "5 fields, expected 4"
    assert reasons[6] == "start_s is not finite: 'nan'"


def test_event_csv_skip_bad_keeps_good(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", BAD_EVENTS)
    result = import_event_csv(path, skip_bad=True)
    assert [segment.video for segment in result.segments] == ["a.mp4", "b.mp4"]
    assert result.skipped == 7


def test_event_csv_quoted_multiline_line_numbers(tmp_path: Path) -> None:
    text = 'video,label,start_s,end_s\n"a\nb.mp4",Walking,0,1\na.mp4,Walking,x,1\n'
    path = write(tmp_path / "events.csv", text)
    problems = raised_problems(import_event_csv, path)
    assert [problem.line for problem in problems] == [4]


def test_event_csv_rejects_wrong_header(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "video,label,start,end\na.mp4,Walking,0,1\n")
    problems = raised_problems(import_event_csv, path, skip_bad=True)
    assert len(problems) == 1
    assert problems[0].line == 1
    assert "expected the columns video,label,start_s,end_s" in problems[0].reason


def test_event_csv_rejects_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "events.csv", "")
    problems = raised_problems(import_event_csv, path)
    assert "empty" in problems[0].reason


def test_event_csv_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(b"video,label,start_s,end_s\na.mp4,Walking,0,1\nb.mp4,\xff,0,1\n")
    problems = raised_problems(import_event_csv, path)
    assert problems[0].line == 3
    assert "not valid UTF-8" in problems[0].reason


def test_event_csv_label_map_drops_unmapped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "events.csv",
        "video,label,start_s,end_s\na.mp4,Walking,0,1\na.mp4,Falling (BW),1,3\na.mp4,Sitting,3,4\n",
    )
    result = import_event_csv(path, label_map=FALL_MAP)
    assert result.segments == [Segment("a.mp4", "fall", 1.0, 3.0)]
    assert result.unmapped == 2


def test_gmdcsa24_events_import_cleanly(data_dir: Path) -> None:
    result = import_event_csv(data_dir / "gmdcsa24_fall" / "events.csv")
    assert len(result.segments) == 35
    assert result.skipped == 0


def test_gmdcsa24_fall_map_gives_ten(data_dir: Path) -> None:
    result = import_event_csv(data_dir / "gmdcsa24_fall" / "events.csv", label_map=FALL_MAP)
    assert len(result.segments) == 10
    assert {segment.label for segment in result.segments} == {"fall"}
    assert result.unmapped == 25


# ---------------------------------------------------------------- CVAT for video 1.1

CVAT_GOOD = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <name>lobby</name>
      <original_size>
        <width>640</width>
        <height>480</height>
      </original_size>
      <source>lobby.mp4</source>
    </task>
  </meta>
  <track id="0" label="person" source="manual">
    <box frame="0" outside="0" occluded="0" keyframe="1" xtl="10.5" ytl="20" xbr="110" ybr="220" z_order="0">
      <attribute name="posture">standing</attribute>
    </box>
    <box frame="1" outside="0" occluded="1" keyframe="0" xtl="12" ytl="20" xbr="112" ybr="220" z_order="0">
      <attribute name="posture">falling</attribute>
    </box>
    <box frame="2" outside="1" occluded="0" keyframe="1" xtl="12" ytl="20" xbr="112" ybr="220" z_order="0">
    </box>
  </track>
  <track id="1" label="car" source="manual">
    <box frame="0" outside="0" occluded="0" keyframe="1" xtl="300" ytl="300" xbr="400" ybr="380" z_order="0">
    </box>
    <polygon frame="0" outside="0" occluded="0" keyframe="1" points="1,1;5,5;1,5" z_order="0">
    </polygon>
  </track>
</annotations>
"""


def test_cvat_imports_boxes(tmp_path: Path) -> None:
    result = import_cvat_video(write(tmp_path / "annotations.xml", CVAT_GOOD))
    assert len(result.boxes) == 4
    first = result.boxes[0]
    assert first == BoxAnnotation(
        "lobby.mp4", 0, 0, "person", (10.5, 20.0, 110.0, 220.0), attributes={"posture": "standing"}
    )
    assert result.ignored == 1
    assert result.skipped == 0


def test_cvat_outside_and_attributes(tmp_path: Path) -> None:
    result = import_cvat_video(write(tmp_path / "annotations.xml", CVAT_GOOD))
    person = [box for box in result.boxes if box.track_id == 0]
    assert [box.outside for box in person] == [False, False, True]
    assert [box.occluded for box in person] == [False, True, False]
    assert person[1].attributes == {"posture": "falling"}
    assert person[2].attributes == {}


def test_cvat_video_name_from_stem(tmp_path: Path) -> None:
    text = CVAT_GOOD.replace("<source>lobby.mp4</source>", "")
    result = import_cvat_video(write(tmp_path / "gate.xml", text))
    assert {box.video for box in result.boxes} == {"gate"}
    assert len(boxes_for(result, "gate", frame=0)) == 2


def test_cvat_label_map_counts_unmapped(tmp_path: Path) -> None:
    path = write(tmp_path / "annotations.xml", CVAT_GOOD)
    result = import_cvat_video(path, label_map={"person": "person"})
    assert {box.label for box in result.boxes} == {"person"}
    assert result.unmapped == 1


CVAT_BAD = """<annotations>
  <meta><task><original_size><width>640</width><height>480</height></original_size></task></meta>
  <track id="0" label="person">
    <box frame="0" outside="0" occluded="0" xtl="10" ytl="10" xbr="50" ybr="90"></box>
    <box frame="1" outside="0" occluded="0" xtl="ten" ytl="10" xbr="50" ybr="90"></box>
    <box frame="2" outside="0" occluded="0" xtl="60" ytl="10" xbr="50" ybr="90"></box>
    <box outside="0" occluded="0" xtl="10" ytl="10" xbr="50" ybr="90"></box>
    <box frame="0" outside="0" occluded="0" xtl="10" ytl="10" xbr="50" ybr="90"></box>
    <box frame="5" outside="0" occluded="0" xtl="700" ytl="10" xbr="750" ybr="90"></box>
    <box frame="6" outside="0" occluded="0" xtl="10" ytl="10" xbr="50" ybr="90"></box>
  </track>
  <track label="person">
    <box frame="0" outside="0" occluded="0" xtl="10" ytl="10" xbr="50" ybr="90"></box>
  </track>
</annotations>
"""


def test_cvat_raises_every_bad_box(tmp_path: Path) -> None:
    path = write(tmp_path / "annotations.xml", CVAT_BAD)
    problems = raised_problems(import_cvat_video, path)
    assert [problem.line for problem in problems] == [5, 6, 7, 8, 9, 12]
    assert all(problem.file == str(path) for problem in problems)
    reasons = [problem.reason for problem in problems]
    assert reasons[0] == "xtl is not a number: 'ten'"
    assert reasons[1] == "xbr (50.0) is not greater than xtl (60.0)"
    assert reasons[2] == "missing frame"
    assert reasons[3] == "track 0 already has a box on frame 0"
    assert "entirely outside the 640x480 frame" in reasons[4]
    assert reasons[5] == "missing track id"


def test_cvat_skip_bad_keeps_good(tmp_path: Path) -> None:
    result = import_cvat_video(write(tmp_path / "annotations.xml", CVAT_BAD), skip_bad=True)
    assert [box.frame for box in result.boxes] == [0, 6]
    assert result.skipped == 6


def test_cvat_malformed_xml_names_line(tmp_path: Path) -> None:
    text = '<annotations>\n  <track id="0" label="person">\n    <box frame="0"\n</annotations>\n'
    problems = raised_problems(import_cvat_video, write(tmp_path / "broken.xml", text), skip_bad=True)
    assert len(problems) == 1
    assert problems[0].line == 4
    assert problems[0].reason.startswith("malformed XML")


def test_cvat_rejects_doctype_entities(tmp_path: Path) -> None:
    text = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE annotations [\n  <!ENTITY lol "lol">\n  <!ENTITY lol2 "&lol;&lol;&lol;&lol;">\n]>\n'
        '<annotations><track id="0" label="&lol2;"></track></annotations>\n'
    )
    problems = raised_problems(import_cvat_video, write(tmp_path / "bomb.xml", text), skip_bad=True)
    assert len(problems) == 1
    assert problems[0].line == 2
    assert "DOCTYPE" in problems[0].reason


def test_cvat_rejects_external_entity(tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.txt", "secret")
    text = f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>\n<annotations>&x;</annotations>\n'
    problems = raised_problems(import_cvat_video, write(tmp_path / "xxe.xml", text))
    assert "DOCTYPE" in problems[0].reason


def test_cvat_rejects_images_export(tmp_path: Path) -> None:
    text = '<annotations><image id="0" name="a.jpg" width="10" height="10"></image></annotations>'
    problems = raised_problems(import_cvat_video, write(tmp_path / "images.xml", text))
    assert "CVAT for video 1.1" in problems[0].reason


def test_cvat_rejects_wrong_root(tmp_path: Path) -> None:
    problems = raised_problems(import_cvat_video, write(tmp_path / "other.xml", "<tracks/>"))
    assert "expected <annotations>" in problems[0].reason


# ---------------------------------------------------------------- MOTChallenge


def test_mot_imports_zero_based_frames(tmp_path: Path) -> None:
    path = write(
        tmp_path / "gt" / "gt.txt",
        "1,1,912,484,97,109,1,1,0.8\n2,1,915.5,484,97,109,1,1,1\n1,2,10,10,5,5,0,8,0\n1,-1,0,0,4,4\n",
    )
    result = import_mot(path, "MOT17-02")
    assert result.boxes[0] == BoxAnnotation(
        "MOT17-02", 0, 1, "person", (912.0, 484.0, 1009.0, 593.0), attributes={"visibility": "0.8"}
    )
    assert result.boxes[1].frame == 1
    assert result.boxes[1].xyxy == (915.5, 484.0, 1012.5, 593.0)
    assert result.boxes[2].track_id is None
    assert len(result.boxes) == 3
    assert result.ignored == 1


def test_mot_class_names_and_map(tmp_path: Path) -> None:
    path = write(tmp_path / "gt.txt", "1,1,0,0,10,10,1,1,1\n1,2,0,0,10,10,1,3,1\n")
    result = import_mot(
        path, "v", class_names={1: "pedestrian", 3: "car"}, label_map={"pedestrian": "person"}
    )
    assert [box.label for box in result.boxes] == ["person"]
    assert result.unmapped == 1


BAD_MOT = (
    "1,1,10,10,20,20,1,1,1\n"  # line 1, valid
    "1,2,10,10\n"  # line 2
    "0,3,10,10,20,20,1,1,1\n"  # line 3
    "1,x,10,10,20,20,1,1,1\n"  # line 4
    "1,4,10,10,0,20,1,1,1\n"  # line 5
    "1,5,10,10,20,20,1,3,1\n"  # line 6
    "1,6,10,10,20,20,1,1,1.5\n"  # line 7
    "2,1,12,10,20,20,1,1,1\n"  # line 8, valid
)


def test_mot_raises_every_bad_row(tmp_path: Path) -> None:
    path = write(tmp_path / "gt.txt", BAD_MOT)
    problems = raised_problems(import_mot, path, "v")
    assert [problem.line for problem in problems] == [2, 3, 4, 5, 6, 7]
    assert all(problem.file == str(path) for problem in problems)
    reasons = [problem.reason for problem in problems]
    assert reasons[0] == "4 fields, expected at least 6"
    assert "frame must be at least 1" in reasons[1]
    assert reasons[2] == "id is not an integer: 'x'"
    assert reasons[3] == "bb_width must be positive, got 0.0"
    assert reasons[4] == "unknown class id 3; class_names has 1"
    assert reasons[5] == "visibility must be between 0 and 1, got 1.5"


def test_mot_skip_bad_keeps_good(tmp_path: Path) -> None:
    result = import_mot(write(tmp_path / "gt.txt", BAD_MOT), "v", skip_bad=True)
    assert [box.frame for box in result.boxes] == [0, 1]
    assert result.skipped == 6


# ---------------------------------------------------------------- YOLO


def test_yolo_imports_pixel_boxes(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    write(labels / "clip_000012.txt", "0 0.5 0.5 0.25 0.5\n1 0.1 0.1 0.2 0.2\n")
    write(labels / "3.txt", "0 0.25 0.75 0.5 0.5\n")
    write(labels / "clip_000004.txt", "")
    write(labels / "classes.txt", "person\nbag\n")
    result = import_yolo(labels, "cam.mp4", ["person", "bag"], (640, 480))
    assert [box.frame for box in result.boxes] == [3, 12, 12]
    assert result.boxes[0] == BoxAnnotation("cam.mp4", 3, None, "person", (0.0, 240.0, 320.0, 480.0))
    assert result.boxes[1].xyxy == (240.0, 120.0, 400.0, 360.0)
    assert result.boxes[2].label == "bag"
    assert result.boxes[2].xyxy == (0.0, 0.0, 128.0, 96.0)


def test_yolo_raises_every_bad_row(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    write(labels / "f_1.txt", "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n5 0.5 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n")
    write(labels / "f_2.txt", "0 0.5 0.5 0 0.2\nperson 0.5 0.5 0.2 0.2\n0 0.4 0.4 0.1 0.1\n")
    write(labels / "notes.txt", "0 0.5 0.5 0.2 0.2\n")
    write(labels / "g_2.txt", "0 0.5 0.5 0.2 0.2\n")
    problems = raised_problems(import_yolo, labels, "v", ["person"], (100, 100))
    where = [(Path(problem.file).name, problem.line) for problem in problems]
    assert where == [
        ("f_1.txt", 2),
        ("f_1.txt", 3),
        ("f_1.txt", 4),
        ("f_2.txt", 1),
        ("f_2.txt", 2),
        ("g_2.txt", 0),
        ("notes.txt", 0),
    ]
    reasons = {(Path(problem.file).name, problem.line): problem.reason for problem in problems}
    assert reasons[("f_1.txt", 2)] == "4 fields, expected 5 (class cx cy w h)"
    assert reasons[("f_1.txt", 3)] == "unknown class id 5; class_names has ids 0 to 0"
    assert reasons[("f_1.txt", 4)] == "cx must be between 0 and 1, got 1.5"
    assert reasons[("f_2.txt", 1)] == "w must be greater than 0"
    assert reasons[("f_2.txt", 2)] == "class is not an integer: 'person'"
    assert reasons[("g_2.txt", 0)] == "frame 2 is also labelled by f_2.txt"
    assert "no frame number" in reasons[("notes.txt", 0)]


def test_yolo_skip_bad_keeps_good(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    write(labels / "1.txt", "0 0.5 0.5 0.2 0.2\n0 0.5 0.5\n")
    write(labels / "2.txt", "0 0.5 0.5 0.2 0.2\n9 0.5 0.5 0.2 0.2\n")
    result = import_yolo(labels, "v", ["person"], (100, 100), skip_bad=True)
    assert [box.frame for box in result.boxes] == [1, 2]
    assert result.skipped == 2


def test_yolo_label_map_counts_unmapped(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    write(labels / "1.txt", "0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2 0.2\n")
    result = import_yolo(labels, "v", ["person", "bag"], (100, 100), label_map={"bag": "bag"})
    assert [box.label for box in result.boxes] == ["bag"]
    assert result.unmapped == 1


def test_yolo_rejects_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    problems = raised_problems(import_yolo, tmp_path / "labels", "v", ["person"], (100, 100))
    assert "no .txt label files" in problems[0].reason


def test_yolo_rejects_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        import_yolo(tmp_path, "v", ["person"], (0, 100))
    with pytest.raises(ValueError, match="class_names"):
        import_yolo(tmp_path, "v", [], (100, 100))
    with pytest.raises(FileNotFoundError):
        import_yolo(tmp_path / "missing", "v", ["person"], (100, 100))
