"""Fine-tuning the fusion model on track windows of annotated footage.

The recipe is the usual one. It uses AdamW with weight decay, dropout on the
projected features and class weights for rare labels (``pos_weight`` of the
binary cross entropy). Early stopping watches a validation split grouped by
subject or video. The seed is fixed, and a full checkpoint is written after
every epoch so that an interrupted run resumes.
The encoder stays frozen except for its top ``train_encoder_layers`` layers.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import pickle
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from pipeline.errors import TrainingError
from pipeline.fusion.features import CUE_NAMES
from pipeline.fusion.model import FusionModel, FusionSpec
from training.config import TrainingConfig
from training.dataset import VideoWindows

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Examples:
    """Track windows of many videos stacked into one set, with their targets."""

    cues: npt.NDArray[np.float32]
    visual: npt.NDArray[np.float32]
    visual_present: npt.NDArray[np.bool_]
    texts: list[str]
    targets: npt.NDArray[np.float32]

    @classmethod
    def stack(
        cls, parts: Sequence[tuple[VideoWindows, npt.NDArray[np.float32]]], visual_dim: int
    ) -> Examples:
        """Concatenate the windows of many videos. Visual features of another width count as missing."""

        def visual_of(windows: VideoWindows) -> npt.NDArray[np.float32]:
            if windows.visual.shape[1] == visual_dim:
                return windows.visual
            return np.zeros((len(windows), visual_dim), np.float32)

        return cls(
            cues=np.concatenate([w.cues for w, _ in parts])
            if parts
            else np.zeros((0, len(CUE_NAMES)), np.float32),
            visual=np.concatenate([visual_of(w) for w, _ in parts])
            if parts
            else np.zeros((0, visual_dim), np.float32),
            visual_present=np.concatenate(
                [w.visual_present & (w.visual.shape[1] == visual_dim) for w, _ in parts]
            )
            if parts
            else np.zeros(0, bool),
            texts=[text for w, _ in parts for text in w.texts],
            targets=np.concatenate([t for _, t in parts]) if parts else np.zeros((0, 0), np.float32),
        )

    def __len__(self) -> int:
        return len(self.texts)


# Cues whose spread in the training windows is below this carry no signal there.
MIN_CUE_STD = 1e-2
# Dividing by this maps an ignored cue to about 0, whatever value it has at inference.
IGNORED_CUE_STD = 1e6
# The recording time of training footage is unknown: replay stamps frames with the
# clock at extraction, so the hour cues would teach the model when training ran.
CLOCK_CUES = ("hour_sin", "hour_cos")


def cue_scale(cues: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Return the mean and scale that normalise each cue; cues to ignore get a huge scale.

    A cue that did not vary in training (no zones were drawn, say) or a clock cue
    would otherwise be divided by a tiny spread, and any other value at inference
    would swamp the model's input.
    """
    mean = cues.mean(axis=0).astype(np.float32)
    std = cues.std(axis=0).astype(np.float32)
    ignored = std < MIN_CUE_STD
    ignored[[CUE_NAMES.index(name) for name in CLOCK_CUES]] = True
    return mean, np.where(ignored, IGNORED_CUE_STD, std).astype(np.float32)


def split_by_group(
    videos: Sequence[str], depth: int, fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split videos into training and validation so that no group (subject, site) lands in both."""

    def group_of(video: str) -> str:
        parts = Path(video).parts
        return video if depth == 0 or len(parts) <= depth else "/".join(parts[:depth])

    groups = sorted({group_of(video) for video in videos})
    rng = random.Random(seed)
    rng.shuffle(groups)
    if len(groups) < 2:
        raise TrainingError(
            f"cannot split {len(videos)} videos into training and validation because they form one group. "
            "Lower data.group_depth (0 groups by video)."
        )
    count = min(len(groups) - 1, max(1, round(len(groups) * fraction)))
    validation_groups = set(groups[:count])
    train = [video for video in videos if group_of(video) not in validation_groups]
    validation = [video for video in videos if group_of(video) in validation_groups]
    return train, validation


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(count: int, size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    return [order[start : start + size] for start in range(0, count, size)]


def _forward(model: FusionModel, examples: Examples, rows: torch.Tensor) -> torch.Tensor:
    device = model.device
    index = rows.numpy()
    cues = torch.from_numpy(examples.cues[index]).to(device)
    visual = torch.from_numpy(examples.visual[index]).to(device) if model.spec.visual_dim else None
    present = torch.from_numpy(examples.visual_present[index]).to(device) if model.spec.visual_dim else None
    return model(cues, [examples.texts[i] for i in index], visual, present)


def predict(model: FusionModel, examples: Examples, batch_size: int = 64) -> npt.NDArray[np.float32]:
    """Score every window, returning probabilities in [0, 1], one row per window and one column per label."""
    model.eval()
    out = []
    with torch.inference_mode():
        for rows in _batches(len(examples), batch_size, None):
            out.append(torch.sigmoid(_forward(model, examples, rows)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.labels)), np.float32)


def _trainable(model: FusionModel) -> list[torch.nn.Parameter]:
    """Freeze the encoder, except its top ``train_encoder_layers`` layers, and the zero-shot head.

    Return the parameters left trainable. Because the zero-shot part stays fixed,
    what the footage teaches goes into the correction from the prefix tokens,
    whose input is the cues and the detector's features.
    """
    frozen = (model.label_embeddings, model.normal_embeddings, model.log_scale, model.label_bias)
    for parameter in (*model.encoder.parameters(), *frozen):
        parameter.requires_grad = False

    layers = getattr(getattr(model.encoder, "encoder", None), "layer", [])
    tuned_count = model.spec.train_encoder_layers
    tuned_layers = list(layers)[len(layers) - tuned_count :] if tuned_count else []
    for layer in tuned_layers:
        for parameter in layer.parameters():
            parameter.requires_grad = True
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def _loss(model: FusionModel, examples: Examples, pos_weight: torch.Tensor, batch_size: int) -> float:
    """Compute the mean weighted binary cross entropy per target element, without gradients."""
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for rows in _batches(len(examples), batch_size, None):
            logits = _forward(model, examples, rows)
            targets = torch.from_numpy(examples.targets[rows.numpy()]).to(model.device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, targets, pos_weight=pos_weight, reduction="sum"
            )
            total += float(loss)
            count += targets.numel()
    return total / max(1, count)


def train(
    config: TrainingConfig,
    train_set: Examples,
    validation_set: Examples,
    visual_dim: int,
    checkpoint: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[FusionModel, dict[str, Any]]:
    """Fit a fusion model and return it, with the weights of its best validation epoch, and the history."""
    settings = config.train
    _set_seed(settings.seed)
    spec = FusionSpec(
        encoder=config.encoder,
        cue_names=CUE_NAMES,
        labels=dict(config.labels),
        normal=list(config.normal),
        visual_dim=visual_dim,
        prefix_tokens=settings.prefix_tokens,
        use_prefix=True,
        train_encoder_layers=settings.train_encoder_layers,
        dropout=settings.dropout,
    )
    model = FusionModel.build(spec, device)

    # Cue normalisation and class weights come from the training split only.
    mean, std = cue_scale(train_set.cues)
    with torch.no_grad():
        model.cue_mean.copy_(torch.from_numpy(mean))
        model.cue_std.copy_(torch.from_numpy(std))
    positives = train_set.targets.sum(axis=0)
    negatives = len(train_set) - positives
    pos_weight = torch.from_numpy(
        np.clip(negatives / np.maximum(positives, 1), 1.0, 100.0).astype(np.float32)
    ).to(device)

    parameters = _trainable(model)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    history: dict[str, Any] = {"train_loss": [], "validation_loss": [], "best_epoch": 0}
    best_loss, best_state, start_epoch = math.inf, copy.deepcopy(model.trainable_state()), 0

    # What the checkpoint must match to be resumed: the settings (the number of epochs may
    # grow, to train longer), the labels and the sizes of the two sets.
    fingerprint = json.dumps(
        [
            settings.model_dump(mode="json", exclude={"epochs"}),
            config.labels,
            config.normal,
            config.encoder,
            len(train_set),
            len(validation_set),
        ]
    )
    if checkpoint is not None and checkpoint.is_file():
        try:
            state = torch.load(checkpoint, map_location=device, weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise TrainingError(
                f"checkpoint {checkpoint} cannot be read ({exc}); remove it to train from the start"
            ) from exc
        if state.get("fingerprint") != fingerprint:
            raise TrainingError(
                f"checkpoint {checkpoint} was written with other training settings, labels or data; "
                "remove it to train from the start, or resume with the settings it was written with"
            )
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"].cpu())
        history, best_loss, best_state = state["history"], state["best_loss"], state["best_state"]
        # A run that stopped early is finished: resuming trains no further epoch.
        start_epoch = settings.epochs if state["finished"] else state["epoch"] + 1
        logger.info("resuming from %s at epoch %d", checkpoint, start_epoch + 1)

    # Epochs since the best validation loss, counted again after a resume.
    stale = start_epoch - 1 - history["best_epoch"] if start_epoch else 0
    epochs = tqdm(range(start_epoch, settings.epochs), desc="epochs", unit="epoch", disable=not progress)
    for epoch in epochs:
        model.train()
        running, seen = 0.0, 0
        for rows in _batches(len(train_set), settings.batch_size, generator):
            targets = torch.from_numpy(train_set.targets[rows.numpy()]).to(device)
            logits = _forward(model, train_set, rows)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, targets, pos_weight=pos_weight
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(rows)
            seen += len(rows)

        train_loss = running / max(1, seen)
        validation_loss = _loss(model, validation_set, pos_weight, settings.batch_size)
        history["train_loss"].append(train_loss)
        history["validation_loss"].append(validation_loss)
        if validation_loss < best_loss - 1e-5:
            best_loss, best_state, stale = validation_loss, copy.deepcopy(model.trainable_state()), 0
            history["best_epoch"] = epoch
        else:
            stale += 1
        epochs.set_postfix(
            train=f"{train_loss:.4f}", validation=f"{validation_loss:.4f}", best=f"{best_loss:.4f}"
        )

        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            partial = checkpoint.with_name(checkpoint.name + ".partial")
            torch.save(
                {
                    "epoch": epoch,
                    "finished": stale >= settings.patience,
                    "fingerprint": fingerprint,
                    "model": model.trainable_state(),
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_loss": best_loss,
                    "best_state": best_state,
                },
                partial,
            )
            # Renamed whole, so a run killed while writing leaves the previous checkpoint.
            os.replace(partial, checkpoint)
        if stale >= settings.patience:
            logger.info(
                "stopping early after epoch %d: no better validation loss for %d epochs", epoch + 1, stale
            )
            break

    model.load_state_dict(best_state, strict=False)
    model.eval()
    history["best_validation_loss"] = best_loss
    return model, history
