"""Evaluation: window-level ROC AUC and AP, event-level precision, recall and F1, false alarms per hour.

Scores become alerts the way the daemon's ``type: label`` rule makes them: a
track's score must stay at or above the threshold for ``hold_s`` seconds, and
after an alert the same track stays quiet for ``cooldown_s``. An alert is a hit
when it starts inside an annotated segment of its label or up to ``slack_s``
after the segment ends. A segment with at least one hit counts as found.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt


def roc_auc(targets: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Compute the area under the ROC curve, with ties counting half.

    Return NaN when only one class is present.
    """
    y = np.asarray(targets, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives, negatives = s[y], s[~y]
    if len(positives) == 0 or len(negatives) == 0:
        return math.nan
    order = np.argsort(np.concatenate([positives, negatives]), kind="mergesort")
    ranks = np.empty(len(order), np.float64)
    values = np.concatenate([positives, negatives])[order]
    # Average ranks over ties.
    start = 0
    while start < len(values):
        stop = start
        while stop + 1 < len(values) and values[stop + 1] == values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    positive_ranks = ranks[: len(positives)].sum()
    return float(
        (positive_ranks - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives))
    )


def precision_recall_curve(
    targets: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Compute precision and recall with each distinct score as the threshold, highest score first."""
    y = np.asarray(targets, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    true_positives = np.cumsum(y)
    predicted = np.arange(1, len(y) + 1)
    last_of_each = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], int)
    precision = true_positives[last_of_each] / predicted[last_of_each]
    recall = true_positives[last_of_each] / max(1, int(y.sum()))
    return precision, recall


def average_precision(targets: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Compute average precision: the precision at each threshold, weighted by the recall it adds.

    Return NaN when there are no positives.
    """
    y = np.asarray(targets, dtype=bool)
    if not y.any():
        return math.nan
    precision, recall = precision_recall_curve(y, scores)
    gains = np.diff(np.r_[0.0, recall])
    return float((gains * precision).sum())


def alerts_from_scores(
    timestamps: npt.ArrayLike,
    track_ids: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float,
    hold_s: float,
    cooldown_s: float,
    exit_grace_s: float = 3.0,
) -> list[float]:
    """Return the times at which a ``type: label`` rule would start an event, given per-window scores.

    This follows the daemon's rule. A track's score must stay at or above ``threshold``
    for ``hold_s`` to start an event. The event lasts while the score stays high and ends
    ``exit_grace_s`` after that, and only then does the track's ``cooldown_s`` begin.
    """
    times = np.asarray(timestamps, np.float64)
    tracks = np.asarray(track_ids, np.int64)
    values = np.asarray(scores, np.float64)
    alerts: list[float] = []

    for track in np.unique(tracks):
        rows = np.nonzero(tracks == track)[0]
        rows = rows[np.argsort(times[rows], kind="mergesort")]
        high_since: float | None = None
        last_true: float | None = None  # set while an event is active
        quiet_until = -math.inf
        for row in rows:
            t = float(times[row])
            if last_true is not None and t - last_true > exit_grace_s:
                # The daemon ends the event at its first frame past the grace, and this
                # track may have no window there, so the end is placed at the grace.
                quiet_until = last_true + exit_grace_s + cooldown_s
                last_true = None
            if values[row] < threshold:
                high_since = None
                continue
            if high_since is None:
                high_since = t
            if last_true is not None:
                last_true = t
            elif t - high_since >= hold_s and t >= quiet_until:
                alerts.append(t)
                last_true = t
    return sorted(alerts)


@dataclasses.dataclass
class EventCounts:
    """Event-level tallies of one label over many videos."""

    segments: int = 0
    found: int = 0
    alerts: int = 0
    hits: int = 0
    false_in_negative_videos: int = 0
    negative_hours: float = 0.0

    def add(
        self,
        alerts: Sequence[float],
        segments: Sequence[tuple[float, float]],
        duration_s: float,
        slack_s: float,
    ) -> None:
        """Add the alerts of one video, given its segments of this label and its duration."""
        hits = [t for t in alerts if any(start <= t <= end + slack_s for start, end in segments)]
        self.segments += len(segments)
        self.found += sum(any(start <= t <= end + slack_s for t in alerts) for start, end in segments)
        self.alerts += len(alerts)
        self.hits += len(hits)
        if not segments:
            self.false_in_negative_videos += len(alerts)
            self.negative_hours += duration_s / 3600

    @property
    def precision(self) -> float:
        return self.hits / self.alerts if self.alerts else math.nan

    @property
    def recall(self) -> float:
        return self.found / self.segments if self.segments else math.nan

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r):
            return 0.0 if self.segments else math.nan
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_alarms_per_hour(self) -> float:
        return self.false_in_negative_videos / self.negative_hours if self.negative_hours else math.nan

    def as_dict(self) -> dict[str, float]:
        return {
            "segments": self.segments,
            "found": self.found,
            "alerts": self.alerts,
            "hits": self.hits,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_alerts_without_label": self.false_in_negative_videos,
            "false_alarms_per_hour": self.false_alarms_per_hour,
        }


def format_table(rows: Iterable[dict[str, object]], columns: Sequence[str]) -> str:
    """Format rows as a plain-text table, with floats to three decimals and NaN as a dash."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    body = [[cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in body)) if body else len(column)
        for i, column in enumerate(columns)
    ]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(
        "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)) for line in body
    )
    return "\n".join(lines)
