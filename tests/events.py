"""Events built by hand, for tests that publish or describe one without running the detector."""

from __future__ import annotations

import time

from pipeline.records import Event


def fall_event(event_id: str = "e1" * 16, camera: str = "ward") -> Event:
    """Return a started fall event of one track, scored 0.93 by the fusion model."""
    return Event(
        id=event_id,
        camera=camera,
        rule="fall",
        rule_type="fall",
        label="fall",
        severity="critical",
        state="started",
        started_at=time.time(),
        ended_at=None,
        track_ids=(3,),
        zone=None,
        scores={"fall": 0.93},
        box=(10.0, 10.0, 50.0, 40.0),
    )
