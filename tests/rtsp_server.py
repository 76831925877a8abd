#!/usr/bin/python3
"""Serve H.264 mp4 files as looping live RTSP cameras for Vigil's tests.

Run it with Debian's /usr/bin/python3, which can import the GStreamer bindings
from python3-gi. scripts/install-system-deps.sh installs everything it needs:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 \\
        --mount /lobby lobby.mp4 --mount /door door.mp4 [--user U --password P]

Each mount is served at rtsp://127.0.0.1:PORT/NAME. The server listens on
127.0.0.1 only, prints one line "READY" on stdout once it accepts connections,
logs to stderr and exits with status 0 on SIGTERM or SIGINT.

Every RTSP session gets its own media pipeline that starts at the first frame
of the file, so two clients of one mount see independent streams. The stream
behaves like a live camera: the SDP has no duration, a PLAY Range is ignored,
and the file repeats forever at its real-time rate. The H.264 access units are
passed through without re-encoding:

    producer:  filesrc ! qtdemux ! h264parse ! appsink
    media:     appsrc (live) ! rtph264pay  ->  RTSP clients

At the end of the file the producer seeks back to the start and shifts the
timestamps of the next pass by the length of the previous ones, so RTP
timestamps keep increasing across the loop.

H.264 streams with B-frames, such as the Intel and GMDCSA24 sample clips, carry
no decode timestamps over RTP. So FFmpeg (seen with PyAV 18.1.0) returns the first decoded frame of a session
with pts None, and the later frames with increasing pts.

Clients must use RTP over TCP, interleaved in the RTSP connection. UDP
transport is disabled so that the server opens no UDP sockets, and a SETUP that
requests UDP gets "461 Unsupported transport".
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

LOG = logging.getLogger("rtsp_server")

BIND_ADDRESS = "127.0.0.1"
ROLE = "viewer"
PREFLIGHT_TIMEOUT_S = 10

PRODUCER_PIPELINE = "filesrc name=file ! qtdemux ! h264parse ! appsink name=sink sync=false emit-signals=true"

# The appsrc is live, so the RTSP media advertises an open range ("npt=now-")
# and ignores seeks, like a camera. Its buffers carry running-time timestamps
# that start at 0 when the media pipeline goes to PLAYING, and the RTSP sinks
# hold each buffer until its time, which paces the stream at the real-time rate.
# config-interval=-1 repeats SPS and PPS before every IDR frame.
MEDIA_LAUNCH = (
    "( appsrc name=source is-live=true format=time do-timestamp=false min-latency=0 block=true"
    " ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
)


class FileLoop:
    """Producer pipeline that demuxes one mp4 and pushes its H.264 frames into an appsrc forever."""

    def __init__(self, path: Path, appsrc: Gst.Element, mount: str) -> None:
        self._path = path
        self._appsrc = appsrc
        self._mount = mount
        self._pipeline = build_producer(path)
        self._caps_set = False
        self._stopped = False
        self._loop_count = 0
        # Offset added to the file's timestamps in the current pass, and the end
        # time (pts + duration) of the latest frame pushed, both in nanoseconds.
        self._offset_ns = 0
        self._end_ns = 0

        sink = self._pipeline.get_by_name("sink")
        sink.connect("new-sample", self._on_new_sample)
        bus = self._pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::eos", self._on_eos)
        bus.connect("message::error", self._on_error)

    def start(self) -> None:
        if self._pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            LOG.error("mount %s: failed to start the producer for %s", self._mount, self._path)

    def stop(self) -> None:
        """Stop the producer.

        The media pipeline must be stopped first, or a push blocked on its full appsrc hangs here.
        """
        if self._stopped:
            return
        self._stopped = True
        self._pipeline.set_state(Gst.State.NULL)
        self._pipeline.get_bus().remove_signal_watch()
        LOG.info("mount %s: producer stopped after %d loops", self._mount, self._loop_count)

    def _on_new_sample(self, sink: Gst.Element) -> Gst.FlowReturn:
        # Runs in the producer's streaming thread, so a blocking push into a
        # full appsrc holds the producer back until the RTSP sinks catch up.
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        if not self._caps_set:
            self._appsrc.set_property("caps", sample.get_caps())
            self._caps_set = True

        # A shallow copy shares the memory but gets its own writable metadata.
        buffer = sample.get_buffer().copy()
        duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else 0
        if buffer.pts != Gst.CLOCK_TIME_NONE:
            buffer.pts += self._offset_ns
            self._end_ns = max(self._end_ns, buffer.pts + duration)
        if buffer.dts != Gst.CLOCK_TIME_NONE:
            buffer.dts += self._offset_ns
            self._end_ns = max(self._end_ns, buffer.dts + duration)

        # The push returns FLUSHING once the media pipeline has stopped, and
        # returning that stops the producer's streaming thread too.
        return self._appsrc.emit("push-buffer", buffer)

    def _on_eos(self, _bus: Gst.Bus, _message: Gst.Message) -> None:
        if self._stopped:
            return
        # No sample of the old pass can arrive after EOS, so the new offset is
        # in place before the first sample of the next pass.
        self._offset_ns = self._end_ns
        self._loop_count += 1
        LOG.debug(
            "mount %s: end of file, loop %d starts at %.3f s",
            self._mount,
            self._loop_count,
            self._offset_ns / Gst.SECOND,
        )
        flags = Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT
        if not self._pipeline.seek_simple(Gst.Format.TIME, flags, 0):
            LOG.error(
                "mount %s: seek to the start of %s failed, the stream ends here",
                self._mount,
                self._path,
            )
            self._appsrc.emit("end-of-stream")

    def _on_error(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        error, debug = message.parse_error()
        LOG.error("mount %s: producer error on %s: %s (%s)", self._mount, self._path, error.message, debug)
        self._appsrc.emit("end-of-stream")


def build_producer(path: Path) -> Gst.Pipeline:
    pipeline = Gst.parse_launch(PRODUCER_PIPELINE)
    # Setting the property avoids quoting the path in the launch string.
    pipeline.get_by_name("file").set_property("location", str(path))
    return pipeline


def check_playable(path: Path) -> str | None:
    """Preroll the producer pipeline on path once.

    Returns an error message, or None when the file plays.
    """
    pipeline = build_producer(path)
    try:
        pipeline.set_state(Gst.State.PAUSED)
        bus = pipeline.get_bus()
        message = bus.timed_pop_filtered(
            PREFLIGHT_TIMEOUT_S * Gst.SECOND, Gst.MessageType.ASYNC_DONE | Gst.MessageType.ERROR
        )
        if message is None:
            return f"timed out after {PREFLIGHT_TIMEOUT_S} s while reading {path}"
        if message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            return f"cannot play {path} as H.264 in an mp4 container: {error.message} ({debug})"
        return None
    finally:
        pipeline.set_state(Gst.State.NULL)


class LoopingFileServer:
    """RTSP server with one mount per file. It tracks each media's producer so it can stop them."""

    def __init__(
        self, port: int, mounts: list[tuple[str, Path]], user: str | None, password: str | None
    ) -> None:
        self._loops: dict[GstRtspServer.RTSPMedia, FileLoop] = {}
        self._lock = threading.Lock()
        self._server = GstRtspServer.RTSPServer()
        self._server.set_address(BIND_ADDRESS)
        self._server.set_service(str(port))
        self._server.connect("client-connected", self._on_client_connected)

        if user is not None:
            self._server.set_auth(build_auth(user, password))

        mount_points = self._server.get_mount_points()
        for mount, path in mounts:
            mount_points.add_factory(mount, self._build_factory(mount, path, with_auth=user is not None))

    def attach(self) -> None:
        """Bind and listen. Raises GLib.Error when the port cannot be bound."""
        source = self._server.create_source(None)
        source.attach(None)

    def shutdown(self) -> None:
        with self._lock:
            medias = list(self._loops)
        # Unpreparing a media stops its pipeline, which unblocks a push that
        # waits on a full appsrc, and then emits "unprepared", which stops the producer.
        for media in medias:
            media.unprepare()
        with self._lock:
            loops = list(self._loops.values())
            self._loops.clear()
        for loop in loops:
            loop.stop()

    def _build_factory(self, mount: str, path: Path, with_auth: bool) -> GstRtspServer.RTSPMediaFactory:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(MEDIA_LAUNCH)
        factory.set_shared(False)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        if with_auth:
            role = Gst.Structure.new_from_string(
                f"{ROLE}, {GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS}=(boolean)true,"
                f" {GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT}=(boolean)true"
            )
            factory.add_role_from_structure(role)
        factory.connect("media-configure", self._on_media_configure, mount, path)
        return factory

    def _on_client_connected(
        self, _server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient
    ) -> None:
        connection = client.get_connection()
        peer = connection.get_ip() if connection is not None else "an unknown address"
        LOG.info("client connected from %s", peer)

    def _on_media_configure(
        self,
        _factory: GstRtspServer.RTSPMediaFactory,
        media: GstRtspServer.RTSPMedia,
        mount: str,
        path: Path,
    ) -> None:
        appsrc = media.get_element().get_by_name("source")
        loop = FileLoop(path, appsrc, mount)
        with self._lock:
            self._loops[media] = loop
        media.connect("unprepared", self._on_media_unprepared)
        loop.start()
        LOG.info("mount %s: new media for %s", mount, path)

    def _on_media_unprepared(self, media: GstRtspServer.RTSPMedia) -> None:
        with self._lock:
            loop = self._loops.pop(media, None)
        if loop is not None:
            loop.stop()


def build_auth(user: str, password: str) -> GstRtspServer.RTSPAuth:
    """Build basic authentication that grants the mounts' role to one user only."""
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
    auth = GstRtspServer.RTSPAuth()
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    return auth


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve H.264 mp4 files as looping live RTSP streams on 127.0.0.1."
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument(
        "--mount",
        nargs=2,
        action="append",
        required=True,
        metavar=("PATH", "FILE"),
        help="serve FILE at rtsp://127.0.0.1:PORT/PATH, e.g. --mount /lobby lobby.mp4 (repeatable)",
    )
    parser.add_argument("--user", help="require RTSP basic authentication with this user name")
    parser.add_argument("--password", help="password for --user")
    parser.add_argument("--verbose", action="store_true", help="also log each loop of each stream")
    args = parser.parse_args(argv)

    if (args.user is None) != (args.password is None):
        parser.error("--user and --password must be given together")
    if not 0 < args.port < 65536:
        parser.error(f"invalid --port {args.port}: expected 1-65535")

    mounts = []
    seen = set()
    for mount, file in args.mount:
        if not mount.startswith("/") or mount == "/":
            parser.error(f"invalid mount {mount!r}: expected a path such as /lobby")
        if mount in seen:
            parser.error(f"mount {mount} is given twice")
        seen.add(mount)
        path = Path(file).resolve()
        if not path.is_file():
            parser.error(f"file not found for mount {mount}: {file}")
        mounts.append((mount, path))
    args.mounts = mounts
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    Gst.init(None)

    for mount, path in args.mounts:
        error = check_playable(path)
        if error is not None:
            LOG.error("mount %s: %s", mount, error)
            return 1

    server = LoopingFileServer(args.port, args.mounts, args.user, args.password)
    try:
        server.attach()
    except GLib.Error as error:
        LOG.exception("failed to listen on %s:%d: %s", BIND_ADDRESS, args.port, error.message)
        return 1

    main_loop = GLib.MainLoop()

    def on_signal(signal_name: str) -> bool:
        LOG.info("received %s, shutting down", signal_name)
        main_loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, on_signal, "SIGTERM")
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, on_signal, "SIGINT")

    for mount, path in args.mounts:
        LOG.info("serving %s at rtsp://%s:%d%s", path, BIND_ADDRESS, args.port, mount)
    print("READY", flush=True)

    main_loop.run()
    server.shutdown()
    LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
