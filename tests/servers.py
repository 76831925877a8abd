"""Throwaway Redis and RTSP servers on free 127.0.0.1 ports, for pytest fixtures.

Both classes run the server as a subprocess. This module uses only the
standard library, and the clients below are examples:

    with RedisServer() as redis_server:
        client = redis.Redis.from_url(redis_server.url)

    with RedisServer(password="secret", tls=True) as redis_server:
        client = redis.Redis.from_url(redis_server.url, ssl_ca_certs=redis_server.ca_file)

    with RtspServer({"/lobby": "lobby.mp4"}) as camera:
        container = av.open(camera.url_for("/lobby"), options={"rtsp_transport": "tcp"})

The binaries come from Debian packages that scripts/install-system-deps.sh installs.
TLS needs a redis-server built with TLS (Debian's is) and the openssl command.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

LOCALHOST = "127.0.0.1"
INSTALL_HINT = "run scripts/install-system-deps.sh to install it"
RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")

# The RTSP server needs Python bindings for GStreamer (python3-gi), which
# Debian installs for its own interpreter only, so a virtualenv's python
# usually cannot import them. VIGIL_GI_PYTHON overrides the interpreter.
GI_PYTHON_ENV = "VIGIL_GI_PYTHON"
DEFAULT_GI_PYTHON = "/usr/bin/python3"

STDERR_TAIL_LINES = 30


class ServerError(RuntimeError):
    """A test server is missing, failed to start or failed to stop."""


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Another process can take the port before the server binds it. That race is
    unlikely on a test machine, and start() then fails with the server's bind error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def find_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerError(f"{name} not found on PATH: {INSTALL_HINT}")
    return path


def find_gi_python() -> str:
    configured = os.environ.get(GI_PYTHON_ENV)
    if configured:
        path = shutil.which(configured)
        if path is None:
            raise ServerError(f"{GI_PYTHON_ENV}={configured}: executable not found")
        return path
    path = shutil.which(DEFAULT_GI_PYTHON)
    if path is None:
        raise ServerError(
            f"{DEFAULT_GI_PYTHON} not found. tests/rtsp_server.py runs under it because python3-gi "
            f"provides GStreamer bindings for Debian's python only: {INSTALL_HINT}, "
            f"or set {GI_PYTHON_ENV} to a python that can import gi"
        )
    return path


class ServerProcess:
    """Base class for a server subprocess on a fixed 127.0.0.1 port, restartable after stop().

    Subclasses implement _command() and _is_ready(). The port is chosen once, in
    the constructor, so a restarted server listens where clients expect it.
    """

    name = "server"

    def __init__(
        self, port: int | None = None, start_timeout_s: float = 15.0, stop_timeout_s: float = 10.0
    ) -> None:
        self.port = port if port is not None else find_free_port()
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._stdout_path: Path | None = None
        self._stderr_path: Path | None = None

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        Raises ServerError with the tail of the server's stderr when it exits
        early or is not ready within start_timeout_s.
        """
        if self.is_running():
            raise ServerError(f"{self.name} is already running on port {self.port} (pid {self.pid})")
        command = self._command()

        # Output goes to files, not pipes, because a pipe that the test does
        # not read fills up and then blocks the server.
        self._log_dir = tempfile.TemporaryDirectory(prefix=f"vigil-{self.name}-")
        self._stdout_path = Path(self._log_dir.name) / "stdout.log"
        self._stderr_path = Path(self._log_dir.name) / "stderr.log"
        with open(self._stdout_path, "wb") as stdout, open(self._stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=self._log_dir.name,
            )

        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                message = f"{self.name} exited with status {self._process.returncode} before it was ready"
                self._fail_start(message, command)
            if self._is_ready():
                return
            if time.monotonic() > deadline:
                message = f"{self.name} was not ready on port {self.port} within {self.start_timeout_s} s"
                self._fail_start(message, command)
            time.sleep(0.05)

    def stop(self) -> None:
        """Send SIGTERM and wait, then SIGKILL after stop_timeout_s.

        Does nothing when the server is not running.
        """
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=self.stop_timeout_s)
        self._process = None
        self._cleanup_logs()

    def kill(self) -> None:
        """Stop the server with SIGKILL, like a crash, so it cannot close its connections."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self.stop()

    def stdout_text(self) -> str:
        return self._read_log(self._stdout_path)

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        return "\n".join(self._read_log(self._stderr_path).splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _is_ready(self) -> bool:
        raise NotImplementedError

    def _redact(self, command: list[str]) -> list[str]:
        """Return command with secrets masked, for error messages."""
        return command

    def _fail_start(self, message: str, command: list[str]) -> None:
        stderr = self.stderr_tail() or "(empty)"
        stdout = "\n".join(self.stdout_text().splitlines()[-STDERR_TAIL_LINES:]) or "(empty)"
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
        self._cleanup_logs()
        raise ServerError(
            f"{message}\ncommand: {subprocess.list2cmdline(self._redact(command))}\n"
            f"stderr (last lines):\n{stderr}\nstdout (last lines):\n{stdout}"
        )

    def _cleanup_logs(self) -> None:
        if self._log_dir is not None:
            self._log_dir.cleanup()
        self._log_dir = None
        self._stdout_path = None
        self._stderr_path = None

    @staticmethod
    def _read_log(path: Path | None) -> str:
        if path is None:
            return ""
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class RedisServer(ServerProcess):
    """redis-server on 127.0.0.1 with persistence off, so each start begins empty.

    With a password the server requires AUTH (--requirepass). With tls=True it
    listens for TLS only, with a throwaway CA and certificates that openssl
    writes into a temporary folder. ca_file verifies the server, whose
    certificate names IP 127.0.0.1, and client_cert_file and client_key_file
    are a client certificate from the same CA. tls_auth_clients is redis-server's
    --tls-auth-clients: "no", "optional" (check a client certificate only when
    one is sent) or "yes" (require one). The certificates stay the same across
    stop() and start() and are deleted when the with-block ends.
    """

    name = "redis-server"

    def __init__(
        self,
        password: str | None = None,
        tls: bool = False,
        tls_auth_clients: Literal["no", "optional", "yes"] = "optional",
        port: int | None = None,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if password == "":
            raise ValueError("password must not be empty; pass None for a server without AUTH")
        super().__init__(port=port, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        self.password = password
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self._cert_dir: tempfile.TemporaryDirectory[str] | None = None
        if tls:
            self._cert_dir = tempfile.TemporaryDirectory(prefix="vigil-redis-tls-")
            write_test_certificates(Path(self._cert_dir.name))

    def _cert_path(self, name: str) -> Path:
        if self._cert_dir is None:
            raise ServerError("this RedisServer was created without tls=True, so it has no certificates")
        return Path(self._cert_dir.name) / name

    @property
    def ca_file(self) -> Path:
        return self._cert_path("ca.crt")

    @property
    def client_cert_file(self) -> Path:
        return self._cert_path("client.crt")

    @property
    def client_key_file(self) -> Path:
        return self._cert_path("client.key")

    # Default of url_for()'s password: use the server's own password.
    _CONFIGURED = object()

    @property
    def url(self) -> str:
        return self.url_for()

    def url_for(self, password: object = _CONFIGURED) -> str:
        """Build redis[s]://[:password@]127.0.0.1:PORT/0.

        By default the URL carries the server's own password. Pass another
        value to test a rejected AUTH, or password=None for a URL without one.
        """
        password = self.password if password is self._CONFIGURED else password
        scheme = "rediss" if self.tls else "redis"
        credentials = "" if password is None else ":" + urllib.parse.quote(str(password), safe="") + "@"
        return f"{scheme}://{credentials}{LOCALHOST}:{self.port}/0"

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        if self._cert_dir is not None:
            self._cert_dir.cleanup()
            self._cert_dir = None

    def _command(self) -> list[str]:
        command = [
            find_binary("redis-server"),
            "--bind", LOCALHOST,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.tls:
            # --port 0 turns the plain-text listener off, so only TLS clients get in.
            command += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self._cert_path("server.crt")),
                "--tls-key-file", str(self._cert_path("server.key")),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", self.tls_auth_clients,
            ]  # fmt: skip
        else:
            command += ["--port", str(self.port)]
        if self.password is not None:
            command += ["--requirepass", self.password]
        return command

    def _redact(self, command: list[str]) -> list[str]:
        redacted = list(command)
        for index, argument in enumerate(redacted[:-1]):
            if argument == "--requirepass":
                redacted[index + 1] = "***"
        return redacted

    def _is_ready(self) -> bool:
        # Redis accepts connections while it loads its dataset and replies to
        # commands with a LOADING error then, so wait for PONG, not an open port.
        request = b""
        expected = b"+PONG"
        if self.password is not None:
            request += _resp_command(b"AUTH", self.password.encode())
            expected = b"+OK\r\n+PONG"
        request += _resp_command(b"PING")
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=1.0) as raw:
                connection = raw
                if self.tls:
                    context = ssl.create_default_context(cafile=self.ca_file)
                    context.load_cert_chain(self.client_cert_file, self.client_key_file)
                    connection = context.wrap_socket(raw, server_hostname=LOCALHOST)
                connection.sendall(request)
                reply = b""
                while len(reply) < len(expected):
                    chunk = connection.recv(64)
                    if not chunk:
                        break
                    reply += chunk
                return reply.startswith(expected)
        except OSError:
            return False


def _resp_command(*arguments: bytes) -> bytes:
    """Encode a command as a RESP array, so that arguments may contain spaces."""
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        parts.append(b"$%d\r\n%s\r\n" % (len(argument), argument))
    return b"".join(parts)


_CA_CONFIG = """\
[req]
distinguished_name = subject
prompt = no
x509_extensions = ca_extensions
[subject]
CN = Vigil test CA
[ca_extensions]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""

# From Python 3.13, ssl.create_default_context() sets VERIFY_X509_STRICT, which
# rejects certificates without the key usage and key identifier extensions below.
_LEAF_CONFIG = """\
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def write_test_certificates(folder: Path) -> None:
    """Write ca.crt, server.crt/.key and client.crt/.key, valid for two days, into folder.

    The keys are unencrypted P-256 keys. The server certificate names IP
    127.0.0.1 and no DNS name, so a client that checks the host name must
    connect to 127.0.0.1, not localhost.
    """
    openssl = find_binary("openssl")
    (folder / "ca.cnf").write_text(_CA_CONFIG)
    (folder / "leaf.cnf").write_text(_LEAF_CONFIG)
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    commands = [
        [openssl, "req", "-x509", "-new", *new_key, "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-config", "ca.cnf"],
    ]  # fmt: skip
    for serial, role in enumerate(("server", "client"), start=2):
        commands += [
            [openssl, "req", "-new", *new_key, "-keyout", f"{role}.key", "-out", f"{role}.csr",
             "-subj", f"/CN=vigil-test-{role}"],
            [openssl, "x509", "-req", "-in", f"{role}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-set_serial", str(serial), "-days", "2", "-out", f"{role}.crt",
             "-extfile", "leaf.cnf", "-extensions", role],
        ]  # fmt: skip
    for command in commands:
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServerError(
                f"openssl failed with status {result.returncode}: {subprocess.list2cmdline(command)}\n"
                f"{result.stderr.strip()}"
            )


class RtspServer(ServerProcess):
    """tests/rtsp_server.py serving mp4 files as looping live RTSP streams over TCP.

    mounts maps an RTSP path such as "/lobby" to an H.264 mp4 file. With user
    and password set, the server requires basic authentication, and url_for()
    puts those credentials into the URL unless the caller passes others.
    """

    name = "rtsp-server"

    def __init__(
        self,
        mounts: Mapping[str, str | os.PathLike[str]],
        user: str | None = None,
        password: str | None = None,
        port: int | None = None,
        start_timeout_s: float = 15.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if not mounts:
            raise ValueError("RtspServer needs at least one mount")
        if (user is None) != (password is None):
            raise ValueError("user and password must be given together")
        for mount, file in mounts.items():
            if not mount.startswith("/") or mount == "/":
                raise ValueError(f"invalid mount {mount!r}: expected a path such as /lobby")
            if not Path(file).is_file():
                raise ValueError(f"file not found for mount {mount}: {file}")
        super().__init__(port=port, start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s)
        self.mounts = {mount: Path(file) for mount, file in mounts.items()}
        self.user = user
        self.password = password

    # Default of url_for()'s user and password: use the server's own credentials.
    _CONFIGURED = object()

    def url_for(self, mount: str, user: object = _CONFIGURED, password: object = _CONFIGURED) -> str:
        """Build rtsp://[user:password@]127.0.0.1:PORT/MOUNT.

        By default the URL carries the server's own credentials. Pass other
        values to test rejected logins, or user=None for a URL without any.
        """
        if mount not in self.mounts:
            raise KeyError(f"unknown mount {mount!r}, expected one of {sorted(self.mounts)}")
        user = self.user if user is self._CONFIGURED else user
        password = self.password if password is self._CONFIGURED else password
        credentials = ""
        if user is not None:
            credentials = urllib.parse.quote(str(user), safe="")
            if password is not None:
                credentials += ":" + urllib.parse.quote(str(password), safe="")
            credentials += "@"
        return f"rtsp://{credentials}{LOCALHOST}:{self.port}{mount}"

    def _command(self) -> list[str]:
        command = [find_gi_python(), str(RTSP_SERVER_SCRIPT), "--port", str(self.port)]
        for mount, file in self.mounts.items():
            command += ["--mount", mount, str(file)]
        if self.user is not None:
            command += ["--user", self.user, "--password", str(self.password)]
        return command

    def _redact(self, command: list[str]) -> list[str]:
        redacted = list(command)
        for index, argument in enumerate(redacted[:-1]):
            if argument == "--password":
                redacted[index + 1] = "***"
        return redacted

    def _is_ready(self) -> bool:
        return "READY" in self.stdout_text().splitlines()
