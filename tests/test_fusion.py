"""Tests of the fusion model: cues from real footage, zero-shot scoring, batching, model folders, label rule."""

from __future__ import annotations

import collections
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from servers import RedisServer

from pipeline.config import FusionConfig, parse_config
from pipeline.detect import YoloDetector
from pipeline.errors import ConfigError, ModelLoadError
from pipeline.fusion.features import CUE_NAMES, Observation, TrackWindow, cue_dict
from pipeline.fusion.model import CUE_CLIP, FusionModel, FusionSpec, stack_inputs
from pipeline.fusion.prompt import track_prompt
from pipeline.fusion.scorer import FusionScorer, prepare
from pipeline.fusion.store import latest_version, load_model, save_model
from pipeline.processing import Processor
from pipeline.records import Frame
from pipeline.replay import replay_file
from pipeline.rules import RuleEngine
from pipeline.tracking import Track, TrackPoint

# 2026-12-02 14:00 local time is afternoon wherever the tests run; only the hour matters here.
WALL = 1_796_220_000.0


def window(
    aspects: list[float],
    heights: list[float],
    centres_y: list[float],
    centres_x: list[float] | None = None,
    step_s: float = 0.1,
    camera: str = "ward",
    visual: np.ndarray | None = None,
) -> TrackWindow:
    """A track window with the given box shape per step; other cues stay neutral."""
    xs = centres_x or [0.5] * len(aspects)
    observations = tuple(
        Observation(
            timestamp=index * step_s,
            captured_at=WALL + index * step_s,
            cx=x,
            cy=y,
            width=h * a * 9 / 16,
            height=h,
            aspect=a,
            confidence=0.8,
            class_name="person",
            visual=visual,
        )
        for index, (a, h, y, x) in enumerate(zip(aspects, heights, centres_y, xs, strict=True))
    )
    return TrackWindow(
        camera=camera, track_id=1, observations=observations, dwell_s=observations[-1].timestamp
    )


def falling() -> TrackWindow:
    """Upright, then within a second wide and low: the shape of a fall."""
    aspects = [0.4, 0.4, 0.45, 0.6, 0.9, 1.3, 1.8, 2.2, 2.3, 2.3, 2.3]
    heights = [0.6, 0.6, 0.58, 0.5, 0.4, 0.3, 0.22, 0.2, 0.2, 0.2, 0.2]
    centres = [0.5, 0.5, 0.51, 0.55, 0.6, 0.66, 0.7, 0.72, 0.72, 0.72, 0.72]
    return window(aspects, heights, centres)


def standing() -> TrackWindow:
    """Upright and still for a second."""
    return window([0.4] * 11, [0.6] * 11, [0.5] * 11)


def running() -> TrackWindow:
    """Upright and crossing the frame from left to right within one second."""
    xs = [0.05 + 0.09 * index for index in range(11)]
    return window([0.45] * 11, [0.5] * 11, [0.5] * 11, centres_x=xs)


@pytest.fixture(scope="module")
def scorer() -> FusionScorer:
    return FusionScorer(FusionConfig(), device="cpu")


@pytest.fixture(scope="module")
def detector() -> YoloDetector:
    config = parse_config({"cameras": {"clip": {"url": "clip"}}, "detector": {"imgsz": 320}}, env={})
    return YoloDetector(config.detector)


def collect_cues(
    detector: YoloDetector, scorer: FusionScorer, clip: Path
) -> dict[int, list[dict[str, float]]]:
    config = parse_config({"cameras": {"clip": {"url": str(clip), "fps": 10}}}, env={})
    by_track: dict[int, list[dict[str, float]]] = collections.defaultdict(list)
    processor = Processor(
        config, detector, scorer, cameras={}, on_scored=lambda w, _: by_track[w.track_id].append(cue_dict(w))
    )
    for _ in replay_file(processor, clip, camera=config.cameras["clip"]):
        pass
    return by_track


def test_fall_clip_shape_change_exceeds_walk(
    detector: YoloDetector, scorer: FusionScorer, data_dir: Path
) -> None:
    fall = collect_cues(detector, scorer, data_dir / "gmdcsa24_fall" / "Subject 1" / "Fall" / "14.mp4")
    walk = collect_cues(detector, scorer, data_dir / "gmdcsa24_fall" / "Subject 1" / "ADL" / "10.mp4")
    # The person is the longest track in each clip.
    fall_cues = max(fall.values(), key=len)
    walk_cues = max(walk.values(), key=len)
    fall_change = max(cues["aspect_change"] for cues in fall_cues)
    walk_change = max(cues["aspect_change"] for cues in walk_cues)
    assert fall_change > 1.0, fall_cues
    assert fall_change > walk_change + 0.5
    assert min(cues["height_ratio"] for cues in fall_cues) < 0.6
    assert min(cues["height_ratio"] for cues in walk_cues) > 0.8
    # Motion and optical flow are measured, not left at zero.
    assert max(cues["motion_max"] for cues in fall_cues) > 0.05
    assert max(cues["flow_max"] for cues in fall_cues) > 0.05


def test_cue_vector_has_every_named_cue() -> None:
    cues = cue_dict(falling())
    assert list(cues) == list(CUE_NAMES)
    assert cues["aspect_change"] == pytest.approx(1.9)
    assert cues["height_ratio"] == pytest.approx(0.2 / 0.6, rel=1e-4)
    assert cues["centre_drop_rate_max"] > 0.5


def test_prompt_describes_fall() -> None:
    text = track_prompt(falling(), cue_dict(falling()))
    assert text.startswith("camera ward, in the ")
    assert "suddenly falls down" in text
    assert "lies on the floor" in text
    assert "is upright" in track_prompt(standing(), cue_dict(standing()))


def test_zero_shot_scores_offline(scorer: FusionScorer) -> None:
    assert scorer.version == "zero-shot"
    assert scorer.labels == ["fall"]
    fall_scores, stand_scores = scorer.score([falling(), standing()])
    fall_score = fall_scores["fall"]
    stand_score = stand_scores["fall"]
    assert fall_score > 0.5
    assert stand_score < 0.5


def test_new_label_scores_from_description() -> None:
    config = FusionConfig(
        labels={"fall": "a person falls down and lies on the floor", "running": "a person runs"}
    )
    scorer = FusionScorer(config, device="cpu")
    run, stand, fall = scorer.score([running(), standing(), falling()])
    assert run["running"] > 0.5
    assert run["running"] > stand["running"] + 0.3
    assert fall["fall"] > fall["running"]


def test_batched_scores_match_single(scorer: FusionScorer) -> None:
    windows = [falling(), standing(), running(), falling()]
    together = scorer.score(windows)
    alone = [scorer.score([item])[0] for item in windows]
    for batched, single in zip(together, alone, strict=True):
        assert batched["fall"] == pytest.approx(single["fall"], abs=1e-3)


def prefix_model(visual_dim: int = 8, seed: int = 0) -> FusionModel:
    """A model with its prefix tokens switched on and random projections, as after training."""
    spec = FusionSpec(
        encoder=FusionConfig().encoder,
        cue_names=CUE_NAMES,
        labels={"fall": "a person falls down and lies on the floor"},
        normal=["a person stands or walks normally"],
        visual_dim=visual_dim,
        use_prefix=True,
    )
    model = FusionModel.build(spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.cue_proj, model.visual_proj, model.fused_head):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.05)
    return model


def test_cue_far_outside_training_is_clipped() -> None:
    model = prefix_model(visual_dim=0)
    cues, _visual, texts = prepare([falling()])
    at_clip, far_away = cues[0].copy(), cues[0].copy()
    column = CUE_NAMES.index("dwell_log")
    at_clip[column] = CUE_CLIP  # the model's mean is 0 and its scale 1
    far_away[column] = 1e6
    with torch.inference_mode():
        clipped = model(stack_inputs([at_clip], [None], 0, "cpu")[0], texts)
        outlier = model(stack_inputs([far_away], [None], 0, "cpu")[0], texts)
    assert torch.isfinite(outlier).all()
    assert torch.allclose(clipped, outlier)


def test_prefix_batches_match_with_missing_features() -> None:
    model = prefix_model()
    rng = np.random.default_rng(1)
    windows = [
        dataclasses.replace(
            falling(),
            observations=tuple(
                dataclasses.replace(obs, visual=rng.normal(size=8).astype(np.float32))
                for obs in falling().observations
            ),
        ),
        standing(),  # no detector features: its visual tokens are masked out
        running(),
    ]
    cues, visual, texts = prepare(windows)

    def logits(rows: slice) -> torch.Tensor:
        tensors = stack_inputs(cues[rows], visual[rows], 8, "cpu")
        with torch.inference_mode():
            return model(tensors[0], texts[rows], tensors[1], tensors[2])

    together = logits(slice(0, 3))
    for index in range(3):
        assert torch.allclose(together[index], logits(slice(index, index + 1))[0], atol=1e-4)
    # The features matter once the prefix is on: the same text with other cues scores differently.
    assert not torch.allclose(together[0], together[2])


def test_model_folder_round_trip_and_hot_reload(tmp_path: Path) -> None:
    root = tmp_path / "models"
    first = prefix_model(visual_dim=0, seed=1)
    save_model(first, root, version="20261204-100000", metrics={"ap": 0.5}, data_hash="abc")
    folder = root / "20261204-100000"
    assert sorted(path.name for path in folder.iterdir()) == [
        "config.json",
        "data.sha256",
        "labels.json",
        "metrics.json",
        "model.safetensors",
    ]
    loaded = load_model(folder)
    cues, visual, texts = prepare([falling()])
    tensors = stack_inputs(cues, visual, 0, "cpu")
    with torch.inference_mode():
        assert torch.allclose(first(tensors[0], texts), loaded(tensors[0], texts), atol=1e-5)

    scorer = FusionScorer(FusionConfig(model_dir=root, reload_interval_s=60), device="cpu")
    assert scorer.version == "20261204-100000"
    before = scorer.score([falling()])[0]["fall"]
    second = prefix_model(visual_dim=0, seed=1)
    with torch.no_grad():
        second.label_bias.fill_(-5.0)
    save_model(second, root, version="20261204-110000")
    assert scorer._watcher is not None
    assert scorer._watcher.check()
    after = scorer.score([falling()])[0]["fall"]
    assert scorer.version == "20261204-110000"
    assert after < before


def test_broken_model_folder_keeps_current(tmp_path: Path) -> None:
    root = tmp_path / "models"
    save_model(prefix_model(visual_dim=0), root, version="20261204-100000")
    scorer = FusionScorer(FusionConfig(model_dir=root), device="cpu")
    broken = root / "20261204-120000"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"garbage")
    assert scorer._watcher is not None
    assert not scorer._watcher.check()
    assert scorer.version == "20261204-100000"
    assert scorer.score([falling()])[0]["fall"] >= 0


def test_version_copied_in_slowly_loads_once_complete(tmp_path: Path) -> None:
    root = tmp_path / "models"
    scorer = FusionScorer(FusionConfig(model_dir=root), device="cpu")
    source = save_model(prefix_model(visual_dim=0), tmp_path / "elsewhere", version="20261204-120000")
    # A copy that is not an atomic rename: the watcher polls while the weights are half written.
    target = root / source.name
    target.mkdir(parents=True)
    shutil.copyfile(source / "config.json", target / "config.json")
    weights = (source / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert scorer._watcher is not None
    assert not scorer._watcher.check()
    assert not scorer._watcher.check(), "an unchanged broken folder is not loaded again"
    (target / "model.safetensors").write_bytes(weights)
    assert scorer._watcher.check()
    scorer.score([falling()])
    assert scorer.version == "20261204-120000"


def test_folders_that_are_not_versions_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "models"
    save_model(prefix_model(visual_dim=0), root, version="20261204-100000")
    shutil.copytree(root / "20261204-100000", root / "backup")
    assert latest_version(root) == root / "20261204-100000"


def test_model_that_fails_to_build_is_tried_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "models"
    scorer = FusionScorer(FusionConfig(model_dir=root), device="cpu")
    save_model(prefix_model(visual_dim=0), root, version="20261204-100000")
    attempts = []

    def out_of_memory(folder: Path, device: str = "cpu") -> FusionModel:
        attempts.append(folder.name)
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("pipeline.fusion.store.load_model", out_of_memory)
    assert scorer._watcher is not None
    assert not scorer._watcher.check()
    assert not scorer._watcher.check()
    assert attempts == ["20261204-100000"]
    assert scorer.version == "zero-shot"


def test_zero_shot_scorer_loads_first_model(tmp_path: Path) -> None:
    root = tmp_path / "models"
    scorer = FusionScorer(FusionConfig(model_dir=root), device="cpu")
    assert scorer.version == "zero-shot"
    save_model(prefix_model(visual_dim=0), root, version="20261204-100000")
    assert scorer._watcher is not None
    assert scorer._watcher.check()
    scorer.score([falling()])
    assert scorer.version == "20261204-100000"


def test_corrupt_weights_raise_load_error(tmp_path: Path) -> None:
    folder = save_model(prefix_model(visual_dim=0), tmp_path, version="20261204-100000")
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="20261204-100000"):
        load_model(folder)


def test_mismatched_weights_raise_load_error(tmp_path: Path) -> None:
    folder = save_model(prefix_model(visual_dim=0), tmp_path, version="20261204-100000")
    state = load_file(str(folder / "model.safetensors"))
    state["label_bias"] = torch.zeros(3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="do not match"):
        load_model(folder)


class LabelScene:
    """One track whose fusion score is set by hand at each step."""

    def __init__(self, rules: dict[str, object]) -> None:
        config = parse_config({"cameras": {"ward": {"url": "ward.mp4", "rules": rules}}}, env={})
        self.engine = RuleEngine("ward", config.cameras["ward"])
        self.track = Track(7, 0.0, collections.deque(maxlen=16))
        self.seq = 0

    def step(self, t: float, fall: float) -> list[tuple[str, str]]:
        self.seq += 1
        self.track.history.append(TrackPoint(t, 0.5, 0.8, (40.0, 60.0, 60.0, 80.0), "person", 0.9))
        self.track.scores = {"fall": fall}
        frame = Frame("ward", self.seq, t, WALL + t, np.zeros((10, 10, 3), np.uint8))
        return [(event.rule, event.state) for event in self.engine.evaluate(frame, [self.track])]


def test_label_rule_hold_and_cooldown() -> None:
    scene = LabelScene(
        {"fell": {"type": "label", "label": "fall", "hold_s": 1.0, "cooldown_s": 5, "exit_grace_s": 0.5}}
    )
    assert scene.step(0.0, 0.9) == []
    assert scene.step(0.5, 0.2) == []  # the hold starts again
    assert scene.step(1.0, 0.9) == []
    assert scene.step(1.5, 0.9) == []
    assert scene.step(2.0, 0.9) == [("fell", "started")]
    assert scene.step(2.5, 0.9) == []
    assert scene.step(3.0, 0.1) == []
    assert scene.step(3.6, 0.1) == [("fell", "ended")]
    for t in (4.0, 5.0, 6.0, 7.0, 8.0):
        assert scene.step(t, 0.9) == [], t  # cooling down until 8.6
    assert scene.step(9.0, 0.9) == [("fell", "started")]


def test_fall_rule_defaults_to_fusion_label() -> None:
    scene = LabelScene({"fall": {"type": "fall", "hold_s": 0.5}})
    assert scene.step(0.0, 0.8) == []
    assert scene.step(0.5, 0.8) == [("fall", "started")]


def test_label_rule_rejects_unknown_label() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"cameras": {"ward": {"url": "w.mp4", "rules": {"r": {"type": "label", "label": "fight"}}}}},
            env={},
        )
    assert (
        "cameras.ward.rules.r.label",
        "unknown label 'fight'; fusion.labels has: fall",
    ) in caught.value.problems


def test_running_daemon_reloads_published_model(tmp_path: Path, redis_server: RedisServer) -> None:
    from pipeline.daemon import Daemon

    root = tmp_path / "models"
    config = parse_config(
        {
            "cameras": {"ward": {"url": "ward.mp4", "enabled": False}},
            "redis": {"url": redis_server.url},
            "metrics": {"enabled": False},
            "alerts": {"spool_dir": str(tmp_path / "spool")},
            "fusion": {"model_dir": str(root), "reload_interval_s": 0.2},
        },
        env={},
    )
    daemon = Daemon(config, detector=object())  # type: ignore[arg-type]
    assert daemon.scorer is not None
    assert daemon.scorer.version == "zero-shot"
    daemon.start()
    try:
        save_model(prefix_model(visual_dim=0), root, version="20261204-120000")
        deadline = time.monotonic() + 20
        while daemon.scorer.version != "20261204-120000" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        daemon.stop()
    assert daemon.scorer.version == "20261204-120000"
    assert daemon.scorer.model.spec.use_prefix


def test_untrained_prefix_model_equals_zero_shot(scorer: FusionScorer) -> None:
    # The learned correction starts at zero, so training starts from the zero-shot model.
    spec = FusionSpec(
        encoder=FusionConfig().encoder,
        cue_names=CUE_NAMES,
        labels=dict(FusionConfig().labels),
        normal=list(FusionConfig().normal),
        use_prefix=True,
    )
    model = FusionModel.build(spec)
    windows = [falling(), standing()]
    cues, visual, texts = prepare(windows)
    tensors = stack_inputs(cues, visual, 0, "cpu")
    with torch.inference_mode():
        fused = torch.sigmoid(model(tensors[0], texts)).numpy()[:, 0]
    zero_shot = [scores["fall"] for scores in scorer.score(windows)]
    assert fused == pytest.approx(zero_shot, abs=1e-3)
