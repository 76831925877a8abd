"""Tests of training: evaluation arithmetic on known cases, grouped splits and a tiny real training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

from pipeline import cli
from pipeline.errors import ConfigError, TrainingError
from pipeline.fusion.features import CUE_NAMES
from pipeline.fusion.store import load_model
from training.config import ExtractConfig, TrainingConfig, load_training_config
from training.dataset import Extractor, cache_key, file_sha256, model_identity
from training.evaluate import EventCounts, alerts_from_scores, average_precision, roc_auc
from training.run import collect_segments, extract_all, run_train
from training.train import IGNORED_CUE_STD, Examples, cue_scale, split_by_group, train


def test_roc_auc_known_case() -> None:
    # Of the four positive-negative pairs, three are ordered right.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_average_precision_known_case() -> None:
    # The ranking is 0.8 (hit), 0.4 (miss), 0.35 (hit), so precision is 1 at recall 0.5 and 2/3 at recall 1.
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision([1, 0, 1], [0.9, 0.2, 0.8]) == pytest.approx(1.0)
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_alerts_need_hold_and_respect_cooldown() -> None:
    times = [0.5 * step for step in range(60)]
    # High for 0-3 s, low until 20 s, high again from 20 s.
    scores = [0.9 if t <= 3.0 or t >= 20.0 else 0.2 for t in times]
    tracks = [1] * len(times)
    alerts = alerts_from_scores(
        times, tracks, scores, threshold=0.5, hold_s=1.0, cooldown_s=5.0, exit_grace_s=3.0
    )
    # The event starts after the 1 s hold and ends 3 s after 3.0; the 5 s cooldown runs until
    # 11.0, so the second high run starts an event once it has held for 1 s.
    assert alerts == [1.0, 21.0]
    long_cooldown = alerts_from_scores(times, tracks, scores, 0.5, 1.0, cooldown_s=20.0, exit_grace_s=3.0)
    assert long_cooldown == [1.0, 26.0]
    # Each track has its own hold timer.
    both = alerts_from_scores([0.0, 0.0, 1.0, 1.0], [1, 2, 1, 2], [0.9, 0.1, 0.9, 0.9], 0.5, 1.0, 5.0)
    assert both == [1.0]


def test_score_that_stays_high_is_one_alert() -> None:
    # Someone lies still for ten minutes: the daemon keeps one event open, so one alert.
    times = [0.5 * step for step in range(1200)]
    alerts = alerts_from_scores(times, [1] * len(times), [0.9] * len(times), 0.5, 1.0, 30.0)
    assert alerts == [1.0]


def test_event_counts_known_case() -> None:
    counts = EventCounts()
    counts.add([2.0, 9.0], [(1.0, 3.0), (5.0, 6.0)], duration_s=10.0, slack_s=1.0)  # one hit, one false
    counts.add([4.0], [], duration_s=1800.0, slack_s=1.0)  # half an hour without the label
    assert counts.segments == 2
    assert counts.found == 1
    assert counts.precision == pytest.approx(1 / 3)
    assert counts.recall == pytest.approx(0.5)
    assert counts.f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert counts.false_alarms_per_hour == pytest.approx(2.0)


def test_split_keeps_groups_apart() -> None:
    videos = [f"Subject {s}/{kind}/{n}.mp4" for s in (1, 2, 3) for kind in ("Fall", "ADL") for n in (1, 2)]
    train, validation = split_by_group(videos, depth=1, fraction=0.34, seed=0)
    assert sorted(train + validation) == sorted(videos)
    subjects_train = {Path(video).parts[0] for video in train}
    subjects_validation = {Path(video).parts[0] for video in validation}
    assert subjects_train.isdisjoint(subjects_validation)
    assert len(subjects_validation) == 1


def test_split_of_one_group_is_rejected() -> None:
    with pytest.raises(TrainingError, match="one group"):
        split_by_group(["Subject 1/a.mp4", "Subject 1/b.mp4"], depth=1, fraction=0.5, seed=0)


def test_box_track_with_a_gap_becomes_two_segments(data_dir: Path, tmp_path: Path) -> None:
    clip = tmp_path / "ward.mp4"
    clip.symlink_to(data_dir / "gmdcsa24_fall" / "Subject 1" / "Fall" / "14.mp4")
    with av.open(str(clip)) as container:
        frame_rate = float(container.streams.video[0].average_rate)
    # One person, frames 1-10, then gone for 3 s, then frames 101-110 (MOT numbers from 1).
    rows = [f"{frame},1,10,20,30,60,1,1,1" for frame in [*range(1, 11), *range(101, 111)]]
    (tmp_path / "seq" / "gt").mkdir(parents=True)
    (tmp_path / "seq" / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    config = TrainingConfig.model_validate(
        {
            "data": {
                "root": str(tmp_path),
                "annotations": [{"format": "mot", "path": "seq/gt/gt.txt", "video": "ward.mp4"}],
                "label_map": {"person": "fall"},
            },
            "output": str(tmp_path / "models"),
        }
    )
    segments, videos = collect_segments(config)
    assert videos == ["ward.mp4"]
    assert segments["ward.mp4"] == [
        ("fall", 0.0, 10 / frame_rate),
        ("fall", 100 / frame_rate, 110 / frame_rate),
    ]


def test_mot_source_needs_its_video(tmp_path: Path) -> None:
    path = tmp_path / "training.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"root": str(tmp_path), "annotations": [{"format": "mot", "path": "gt.txt"}]},
                "output": "m",
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_training_config(path)
    assert "mot annotations need `video`" in str(caught.value)


def tiny_config(data_dir: Path, tmp_path: Path) -> TrainingConfig:
    root = data_dir / "gmdcsa24_fall"
    return TrainingConfig.model_validate(
        {
            "data": {
                "root": str(root),
                "annotations": [{"format": "events_csv", "path": "events.csv"}],
                "label_map": {"Falling (BW)": "fall"},
                "videos": ["Subject 1/Fall/14.mp4", "Subject 1/ADL/10.mp4"],
                "group_depth": 0,
            },
            "extract": {"fps": 5, "cache_dir": str(tmp_path / "cache")},
            "train": {"epochs": 2, "batch_size": 8, "validation_fraction": 0.5},
            "output": str(tmp_path / "models"),
        }
    )


@pytest.mark.slow
def test_tiny_training_run_publishes_loadable_model(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(data_dir, tmp_path)
    folder = run_train(config, progress=False)
    assert folder.parent == tmp_path / "models"
    for name in (
        "config.json",
        "model.safetensors",
        "labels.json",
        "metrics.json",
        "data.sha256",
        "loss.png",
    ):
        assert (folder / name).is_file(), name
    model = load_model(folder)
    assert model.spec.use_prefix
    assert model.labels == ["fall"]
    assert model.spec.visual_dim > 0

    # The features of both videos are cached, so a second extraction replays nothing.
    segments, videos = collect_segments(config)
    assert [label for label, _, _ in segments["Subject 1/Fall/14.mp4"]] == ["fall"]
    assert segments["Subject 1/ADL/10.mp4"] == []
    windows = extract_all(config, videos, progress=False)
    assert sorted(windows) == sorted(videos)
    assert all(len(video_windows) > 0 for video_windows in windows.values())
    assert np.isfinite(windows["Subject 1/Fall/14.mp4"].cues).all()

    # `vigil eval` on the same footage: the published model and both baselines, as a table and JSON.
    config_file = tmp_path / "training.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    report_file = tmp_path / "report.json"
    assert cli.main(["eval", "-c", str(config_file), "--quiet", "--json", str(report_file)]) == 0
    table = capsys.readouterr().out
    assert "zero-shot" in table
    assert "detector Fall class" in table
    assert f"model {folder.name}" in table
    report = json.loads(report_file.read_text())
    assert report["videos"] == 2
    assert report[f"model {folder.name}"]["fall"]["segments"] == 1
    assert 0.0 <= report["zero-shot"]["fall"]["roc_auc"] <= 1.0


def test_constant_and_clock_cues_are_ignored() -> None:
    rng = np.random.default_rng(0)
    cues = rng.normal(size=(200, len(CUE_NAMES))).astype(np.float32)
    in_zone = CUE_NAMES.index("in_zone")
    cues[:, in_zone] = 0.0  # no zones drawn on the training footage
    mean, std = cue_scale(cues)
    assert std[in_zone] == IGNORED_CUE_STD
    assert std[CUE_NAMES.index("hour_sin")] == IGNORED_CUE_STD
    assert std[CUE_NAMES.index("hour_cos")] == IGNORED_CUE_STD
    varying = CUE_NAMES.index("aspect_change")
    assert std[varying] == pytest.approx(cues[:, varying].std(), rel=1e-5)
    assert mean[varying] == pytest.approx(cues[:, varying].mean(), abs=1e-6)


def synthetic_examples(count: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    targets = (rng.random((count, 1)) < 0.3).astype(np.float32)
    cues = rng.normal(size=(count, len(CUE_NAMES))).astype(np.float32)
    cues[:, CUE_NAMES.index("aspect_change")] += 2 * targets[:, 0]
    texts = ["a person suddenly falls down" if target else "a person walks" for target in targets[:, 0]]
    return Examples(cues, np.zeros((count, 0), np.float32), np.zeros(count, bool), texts, targets)


def small_config(tmp_path: Path, **train: object) -> TrainingConfig:
    settings = {"epochs": 3, "batch_size": 8, "patience": 10, **train}
    return TrainingConfig.model_validate(
        {
            "data": {"root": str(tmp_path), "annotations": [{"format": "events_csv", "path": "e.csv"}]},
            "train": settings,
            "output": str(tmp_path / "models"),
        }
    )


def test_resumed_training_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    train_set, validation_set = synthetic_examples(24, 1), synthetic_examples(8, 2)
    whole, _ = train(small_config(tmp_path), train_set, validation_set, 0, progress=False)

    checkpoint = tmp_path / "last.pt"
    train(small_config(tmp_path, epochs=2), train_set, validation_set, 0, checkpoint, progress=False)
    assert checkpoint.is_file()
    assert not checkpoint.with_name("last.pt.partial").exists()
    resumed, history = train(small_config(tmp_path), train_set, validation_set, 0, checkpoint, progress=False)
    assert len(history["train_loss"]) == 3
    for name, tensor in whole.trainable_state().items():
        assert torch.equal(tensor, resumed.trainable_state()[name]), name


def test_resume_rejects_other_settings_and_broken_checkpoints(tmp_path: Path) -> None:
    train_set, validation_set = synthetic_examples(16, 1), synthetic_examples(8, 2)
    checkpoint = tmp_path / "last.pt"
    train(small_config(tmp_path, epochs=1), train_set, validation_set, 0, checkpoint, progress=False)
    with pytest.raises(TrainingError, match="other training settings"):
        train(small_config(tmp_path, lr=0.01), train_set, validation_set, 0, checkpoint, progress=False)
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.raises(TrainingError, match="cannot be read"):
        train(small_config(tmp_path), train_set, validation_set, 0, checkpoint, progress=False)


def test_cache_key_follows_the_model_files_and_device(tmp_path: Path) -> None:
    weights = tmp_path / "detector.pt"
    weights.write_bytes(b"first training run")
    config = small_config(tmp_path).model_copy(
        update={"extract": ExtractConfig(weights=str(weights), cache_dir=tmp_path / "cache")}
    )
    extractor = Extractor(config)
    first = model_identity(extractor.vigil)
    assert first["device"] == "cpu"
    assert first["half"] is False
    weights.write_bytes(b"retrained in place")
    second = model_identity(extractor.vigil)
    assert first["weights"] != second["weights"]
    assert cache_key("video", config, first) != cache_key("video", config, second)
    assert cache_key("video", config, {**first, "half": True}) != cache_key("video", config, first)


def test_unreadable_cache_file_is_extracted_again(data_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(data_dir, tmp_path)
    extractor = Extractor(config)
    root, video = config.data.root, "Subject 1/Fall/14.mp4"
    key = cache_key(file_sha256(root / video), config, model_identity(extractor.vigil))
    cached = config.extract.cache_dir / f"{key}.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"a file cut short by a crash")
    windows = extractor.windows(root, video)
    assert extractor.misses == 1
    assert len(windows) > 0
    assert Extractor(config).windows(root, video).cues.shape == windows.cues.shape
