"""The ``vigil`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
import yaml

from pipeline import malloc
from pipeline.errors import VigilError

if TYPE_CHECKING:
    from training.config import TrainingConfig

logger = logging.getLogger("pipeline")


def _set_offline_defaults() -> None:
    # Ultralytics looks up hosts at import unless set offline, and tries to
    # install missing packages; neither belongs in a daemon. Users can override both.
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    if _is_training_config(Path(args.file)):
        from training.config import load_training_config

        training = load_training_config(Path(args.file))
        sources = len(training.data.annotations)
        print(
            f"{args.file}: OK (training config, {sources} annotation sources, {len(training.labels)} labels)"
        )
        return 0
    config = load_config(args.file)
    rules = sum(len(camera.rules) for camera in config.cameras.values())
    print(f"{args.file}: OK ({len(config.cameras)} cameras, {rules} rules)")
    return 0


def _is_training_config(path: Path) -> bool:
    """Tell a training config (``data:`` and no ``cameras:``) from a daemon config, without validating it."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # load_config reports the problem
    return isinstance(document, dict) and "data" in document and "cameras" not in document


def _training_config(args: argparse.Namespace) -> TrainingConfig:
    from training.config import load_training_config

    config = load_training_config(args.config)
    if args.skip_bad_rows:
        config = config.model_copy(update={"data": config.data.model_copy(update={"skip_bad_rows": True})})
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from training.run import run_train

    config = _training_config(args)
    if args.output is not None:
        config = config.model_copy(update={"output": args.output})
    folder = run_train(config, resume=args.resume, progress=not args.quiet)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    print(f"model published: {folder}")
    for label, values in metrics["validation"].items():
        print(
            f"  {label}: validation recall {values['recall']:.2f}, precision {values['precision']:.2f}, "
            f"AP {values.get('ap', float('nan')):.3f}"
        )
    print("A daemon whose fusion.model_dir is this folder's parent loads it within fusion.reload_interval_s.")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.fusion.store import latest_version
    from training.evaluate import format_table
    from training.run import run_eval

    config = _training_config(args)
    folder = args.model
    if folder is None and not args.baselines_only:
        folder = latest_version(config.output)
        if folder is None:
            print(f"no model in {config.output}; evaluating the baselines only", file=sys.stderr)
    report = run_eval(config, folder, progress=not args.quiet)
    rows = [
        {"method": method, "label": label, **values}
        for method, by_label in report.items()
        if isinstance(by_label, dict)
        for label, values in by_label.items()
    ]
    columns = [
        "method",
        "label",
        "roc_auc",
        "ap",
        "precision",
        "recall",
        "f1",
        "false_alerts_without_label",
        "false_alarms_per_hour",
    ]
    print(format_table(rows, columns))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"written: {args.json}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.daemon import Daemon

    config = load_config(args.config)
    daemon = Daemon(config)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("received %s, draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    daemon.start()
    # Wake up regularly: a signal delivered to one of FFmpeg's threads only sets a flag,
    # and an untimed wait in the main thread would never look at it.
    while not stop.wait(0.5):
        pass
    daemon.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo
    from pipeline.samples import DEFAULT_SAMPLE_DIR

    data_dir = Path(args.data_dir or os.environ.get("VIGIL_SAMPLE_DIR") or DEFAULT_SAMPLE_DIR)
    run_demo(
        data_dir=data_dir,
        duration=args.duration,
        redis_url=args.redis or os.environ.get("VIGIL_REDIS_URL"),
        language=args.language,
        snapshot_dir=Path(args.snapshot_dir),
        out=sys.stdout,
    )
    return 0


def _alerts_option_name(location: tuple[int | str, ...]) -> str:
    """Return the ``vigil alerts`` option behind a RedisConfig error location."""
    if not location:
        return "options"
    field = str(location[0])
    return "--redis" if field == "url" else "--" + field.replace("_", "-")


def alerts_client(args: argparse.Namespace) -> redis.Redis:
    """Create the Redis client of ``vigil alerts`` through the same RedisConfig as ``vigil run``.

    Raises ConfigError when the URL or the TLS options are invalid.
    """
    from pydantic import ValidationError

    from pipeline.config import RedisConfig
    from pipeline.errors import ConfigError

    settings: dict[str, Any] = {
        "url": args.redis or os.environ.get("VIGIL_REDIS_URL") or "redis://127.0.0.1:6379/0",
        "tls_ca_file": args.tls_ca_file,
        "tls_cert_file": args.tls_cert_file,
        "tls_key_file": args.tls_key_file,
        "tls_check_hostname": args.tls_check_hostname,
    }
    # Options left out stay out of model_fields_set, so only those given must match the URL's scheme.
    explicit_settings = {key: value for key, value in settings.items() if value is not None}
    try:
        config = RedisConfig(**explicit_settings)
    except ValidationError as exc:
        # Only the messages: pydantic's own text repeats the input, which may be a URL with a password.
        problems = [
            (_alerts_option_name(error["loc"]), error["msg"].removeprefix("Value error, "))
            for error in exc.errors()
        ]
        raise ConfigError("vigil alerts options", problems) from None
    assert config.url is not None
    options = config.client_options()
    # No read timeout, because a subscriber waits for messages as long as it runs.
    options["socket_timeout"] = None
    return redis.Redis.from_url(config.url.get_secret_value(), **options)


def cmd_alerts(args: argparse.Namespace) -> int:
    from pipeline.demo import format_alert

    client = alerts_client(args)

    def show(payload: str | bytes) -> None:
        message = json.loads(payload)
        if args.camera and message["camera"] != args.camera:
            return
        print(
            json.dumps(message, ensure_ascii=False) if args.json else format_alert(message, args.language),
            flush=True,
        )

    try:
        if args.from_id is not None:
            last_id = args.from_id
            while True:
                batches: Any = client.xread({args.stream: last_id}, count=100, block=1000)
                for _stream, entries in batches:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        show(fields[b"alert"])
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        if args.camera:
            pubsub.subscribe(f"{args.prefix}:{args.camera}")
        else:
            pubsub.psubscribe(f"{args.prefix}:*")
        for item in pubsub.listen():
            show(item["data"])
    except KeyboardInterrupt:
        return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description="Real-time video surveillance daemon.")
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon until SIGTERM")
    run.add_argument("-c", "--config", required=True, help="YAML config file")
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="run the sample clips as cameras and print alerts")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument(
        "--data-dir",
        help="folder with the sample clips (default: $VIGIL_SAMPLE_DIR or ~/.cache/vigil/samples)",
    )
    demo.add_argument("--redis", help="Redis URL (default: $VIGIL_REDIS_URL, else an embedded Redis)")
    demo.add_argument("--language", choices=["en", "zh"], default="en", help="language of printed alerts")
    demo.add_argument("--snapshot-dir", default="snapshots/demo", help="folder for alert snapshots")
    demo.set_defaults(handler=cmd_demo)

    alerts = commands.add_parser("alerts", help="print alerts from Redis as they are published")
    alerts.add_argument("--redis", help="Redis URL (default: $VIGIL_REDIS_URL or redis://127.0.0.1:6379/0)")
    alerts.add_argument("--tls-ca-file", help="PEM file of the CA certificates for a rediss:// URL")
    alerts.add_argument("--tls-cert-file", help="PEM client certificate for a rediss:// URL")
    alerts.add_argument("--tls-key-file", help="PEM private key of --tls-cert-file")
    alerts.add_argument(
        "--tls-check-hostname",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="check that the server certificate names the URL's host (default: check)",
    )
    alerts.add_argument("--camera", help="only this camera")
    alerts.add_argument(
        "--from-id", help="read the durable stream from this id ('0' for all) instead of subscribing"
    )
    alerts.add_argument("--stream", default="vigil:events", help="stream key for --from-id")
    alerts.add_argument("--prefix", default="vigil:alerts", help="channel prefix")
    alerts.add_argument("--language", choices=["en", "zh"], default="en")
    alerts.add_argument("--json", action="store_true", help="print the raw JSON messages")
    alerts.set_defaults(handler=cmd_alerts)

    training = commands.add_parser(
        "train", help="fine-tune the fusion model on annotated footage and publish it"
    )
    training.add_argument("-c", "--config", type=Path, required=True, help="training config (YAML)")
    training.add_argument(
        "--output", type=Path, help="model root to publish into (default: the config's output)"
    )
    training.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    training.add_argument(
        "--skip-bad-rows", action="store_true", help="import the good annotation rows and count the bad ones"
    )
    training.add_argument("--quiet", action="store_true", help="no progress bars")
    training.set_defaults(handler=cmd_train)

    evaluation = commands.add_parser(
        "eval", help="evaluate a fusion model and the baselines on annotated footage"
    )
    evaluation.add_argument("-c", "--config", type=Path, required=True, help="training config (YAML)")
    evaluation.add_argument(
        "--model", type=Path, help="model folder (default: the newest under the config's output)"
    )
    evaluation.add_argument(
        "--baselines-only", action="store_true", help="only the zero-shot model and the detector"
    )
    evaluation.add_argument("--json", type=Path, help="also write the report as JSON")
    evaluation.add_argument(
        "--skip-bad-rows", action="store_true", help="import the good annotation rows and count the bad ones"
    )
    evaluation.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluation.set_defaults(handler=cmd_eval)

    check = commands.add_parser(
        "check-config", help="validate a daemon or training config file and print every error"
    )
    check.add_argument("file")
    check.set_defaults(handler=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before any reader or decoder thread exists, so that every thread shares the two heaps.
    malloc.limit_arenas()
    _set_offline_defaults()
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return int(args.handler(args))
    except VigilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except redis.AuthenticationError as exc:
        print(f"error: Redis rejected the credentials: {exc}", file=sys.stderr)
        return 1
    except redis.ConnectionError as exc:
        print(f"error: cannot reach Redis: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
