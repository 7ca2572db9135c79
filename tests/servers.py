"""Real servers on loopback for the tests, each started in its own process with a generated config.

Every server serves a folder of the test's own and logs each request, so tests count what the
indexer really asked for on the server side.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def find_binary(name: str, *candidates: str) -> str:
    """The path of a server binary, on PATH or in the sbin folders Debian uses."""
    for candidate in (shutil.which(name), *candidates):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} is not installed: run the README's test command (make test)")


@dataclass(frozen=True, slots=True)
class Request:
    """One request seen by a server."""

    method: str
    path: str
    status: int
    bytes_sent: int
    range: str


class Nginx:
    """nginx serving `root` with autoindex on 127.0.0.1, one access-log line per request."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "access.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        """Write the config and start nginx in the foreground of a child process."""
        binary = find_binary("nginx", "/usr/sbin/nginx")
        self.workdir.mkdir(parents=True, exist_ok=True)
        user = "user root;" if os.geteuid() == 0 else ""
        conf = self.workdir / "nginx.conf"
        conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format counted '$request_method|$request_uri|$status|$bytes_sent|$http_range';
    access_log {self.log} counted;
    client_body_temp_path {self.workdir}/body;
    proxy_temp_path {self.workdir}/proxy;
    fastcgi_temp_path {self.workdir}/fastcgi;
    uwsgi_temp_path {self.workdir}/uwsgi;
    scgi_temp_path {self.workdir}/scgi;
    types {{ image/tiff tif tiff; image/jp2 jp2; text/plain tfw j2w wld prj; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        autoindex on;
        autoindex_exact_size on;
        charset utf-8;
    }}
}}
""")
        self.process = subprocess.Popen([binary, "-c", str(conf), "-p", str(self.workdir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop nginx and wait for it."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def requests(self) -> list[Request]:
        """Every request logged so far."""
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            method, path, status, sent, rng = line.split("|", 4)
            out.append(Request(method, path, int(status), int(sent), "" if rng == "-" else rng))
        return out

    def reset_log(self) -> None:
        """Forget the requests logged so far (nginx keeps appending to the same file)."""
        if self.log.exists():
            self.log.write_text("")
