"""An HTTP file server on loopback behind a delay line, for the benchmark.

It serves a folder the way nginx does with ``autoindex on; autoindex_exact_size on``: listing
pages with exact sizes and dates, ``HEAD``, ranged ``GET`` answered ``206`` with a
``Content-Range``, ``ETag`` and ``Last-Modified``, keep-alive and any number of concurrent
connections. It answers at once; its clients reach it through a `delay_line.DelayLine` in the
same event loop, which delivers every byte half the latency later each way, so requests
pipelined or in flight on many connections overlap as on a real link.

It counts what it answers (requests by kind, bytes sent, headers included) and serves the
counters as JSON on ``GET /_bench/stats``; ``POST /_bench/reset`` sets them to zero. Those two
paths are not counted; `LatencyServer` asks them on the server's own port, not across the line.
A listing page is rendered once per folder version (the folder's modification time) and the
cache is emptied by a reset, so serving the same 1,000-entry page again costs about what it costs
nginx, not a Python rendering.

It speaks HTTP/1.1 over a plain `asyncio.Protocol`, not a web framework: it shares the
benchmark's two cores, and a tenth of a millisecond per request is already more than nginx costs.

Run it as its own process (``python -m tests.benchmarks.latency_server ROOT``, printing
``PORT n DIRECT m``: the delayed port and the server's own): `rasterio` holds the GIL while GDAL
waits on a socket, so a server thread inside the reading process would stall. The `LatencyServer`
class starts and stops that process.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import posixpath
import re
import resource
import select
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from tests.benchmarks.delay_line import DelayLine, LineCounters, until_stopped

STATS_PATH = "/_bench/stats"
RESET_PATH = "/_bench/reset"
SERVER_NAME = "nginx/1.22.1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_REASONS = {200: "OK", 206: "Partial Content", 301: "Moved Permanently", 404: "Not Found",
            405: "Not Allowed", 416: "Requested Range Not Satisfiable"}


@dataclass(slots=True)
class Counters:
    """What the server answered since the last reset."""

    requests: int = 0
    listing_requests: int = 0
    raster_requests: int = 0
    """HEAD or GET of a file (any file that is not a listing page)."""
    head_requests: int = 0
    range_requests: int = 0
    full_gets: int = 0
    not_found: int = 0
    bytes_sent: int = 0
    listing_bytes: int = 0
    raster_bytes: int = 0
    started: float = field(default_factory=time.monotonic)
    cpu_s_at_reset: float = field(default_factory=lambda: _cpu_s())

    def as_dict(self) -> dict[str, Any]:
        """The counters as JSON values, with the server's CPU time since the reset."""
        return {
            "requests": self.requests, "listing_requests": self.listing_requests,
            "raster_requests": self.raster_requests, "head_requests": self.head_requests,
            "range_requests": self.range_requests, "full_gets": self.full_gets,
            "not_found": self.not_found, "bytes_sent": self.bytes_sent,
            "listing_bytes": self.listing_bytes, "raster_bytes": self.raster_bytes,
            "server_cpu_s": round(_cpu_s() - self.cpu_s_at_reset, 3),
        }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@lru_cache(maxsize=1024)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


def http_date(timestamp: float) -> str:
    """An RFC 7231 date, as in ``Last-Modified`` (whole seconds: formatted once per second)."""
    return _http_date(int(timestamp))


def listing_page(url_path: str, folder: Path) -> str:
    """The nginx ``autoindex`` page of a folder: folders first, then files, with exact sizes."""
    dirs: list[tuple[str, float]] = []
    files: list[tuple[str, float, int]] = []
    with os.scandir(folder) as it:
        for item in it:
            if item.name.startswith("."):
                continue
            st = item.stat()
            if item.is_dir():
                dirs.append((item.name, st.st_mtime))
            else:
                files.append((item.name, st.st_mtime, st.st_size))
    title = html.escape(url_path)
    lines = [f"<html>\r\n<head><title>Index of {title}</title></head>\r\n<body>\r\n"
             f'<h1>Index of {title}</h1><hr><pre><a href="../">../</a>\r\n']
    for name, mtime in sorted(dirs):
        lines.append(_listing_line(name + "/", mtime, "-"))
    for name, mtime, size in sorted(files):
        lines.append(_listing_line(name, mtime, str(size)))
    lines.append("</pre><hr></body>\r\n</html>\r\n")
    return "".join(lines)


def _listing_line(name: str, mtime: float, size: str) -> str:
    shown = name if len(name) <= 50 else name[:47] + "..>"
    date = datetime.fromtimestamp(mtime, tz=UTC).strftime("%d-%b-%Y %H:%M")
    return (f'<a href="{quote(name)}">{html.escape(shown)}</a>{" " * (51 - len(shown))}'
            f"{date} {size:>19}\r\n")


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: status, headers (Content-Length added when sent), body, and what it counts as."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    kind: str = "other"
    """``listing``, ``file`` or ``other``."""
    length: int | None = None
    """Content-Length when it is not the body's (a HEAD)."""


def _not_found() -> Answer:
    return Answer(404, {"Content-Type": "text/html"}, b"not found\n")


class FileServer:
    """What the server answers: files and listings under `root`, and the counters.

    The HTTP/1.1 protocol is a plain `asyncio.Protocol` (`_Connection`), not a web framework: this
    server shares the benchmark's cores, and should cost them about what nginx would.
    """

    def __init__(self, root: Path, line: LineCounters | None = None) -> None:
        self.root = root.resolve()
        self.counters = Counters()
        self.line = line if line is not None else LineCounters()
        """What the delay line in front carried: connections, bytes each way."""
        self._pages: dict[str, tuple[int, bytes]] = {}

    def control(self, method: str, path: str) -> Answer | None:
        """The answer to a benchmark control request (neither delayed nor counted), else None."""
        if path == STATS_PATH and method == "GET":
            stats = {**self.counters.as_dict(), "line": self.line.as_dict()}
            return Answer(200, {"Content-Type": "application/json"}, json.dumps(stats).encode())
        if path == RESET_PATH and method == "POST":
            self.counters = Counters()
            self.line.connections = self.line.bytes_up = self.line.bytes_down = 0
            self._pages.clear()
            return Answer(200, {"Content-Type": "application/json"}, b'{"reset": true}')
        return None

    def answer(self, method: str, raw_path: str, range_header: str) -> Answer:
        """A listing page, a file or a part of it, counted."""
        self.counters.requests += 1
        head = method == "HEAD"
        if head:
            self.counters.head_requests += 1
        if method not in ("GET", "HEAD"):
            return Answer(405, {"Content-Type": "text/plain"}, b"not allowed\n")
        url_path = unquote(raw_path.split("?", 1)[0])
        relative = posixpath.normpath(url_path.lstrip("/"))
        if relative == ".." or relative.startswith(("../", "/")):
            return _not_found()
        target = self.root / relative
        try:
            st = os.stat(target)  # one system call per request: the server shares the benchmark's cores
        except OSError:
            return _not_found()
        if stat.S_ISDIR(st.st_mode):
            if not url_path.endswith("/"):
                return Answer(301, {"Location": raw_path + "/", "Content-Type": "text/html"}, kind="listing")
            return Answer(200, {"Content-Type": "text/html; charset=utf-8"}, self._page(url_path, target),
                          kind="listing")
        if not stat.S_ISREG(st.st_mode):
            return _not_found()
        return self._file(target, st, head, range_header)

    def count_sent(self, answer: Answer, sent: int) -> None:
        """Count a response of `sent` bytes, headers included."""
        c = self.counters
        c.bytes_sent += sent
        if answer.kind == "listing":
            c.listing_requests += 1
            c.listing_bytes += sent
        elif answer.kind == "file":
            c.raster_requests += 1
            c.raster_bytes += sent
        if answer.status == 404:
            c.not_found += 1

    def _page(self, url_path: str, folder: Path) -> bytes:
        """A listing page, rendered once per folder version: nginx's cost, not Python's, per request."""
        version = folder.stat().st_mtime_ns
        cached = self._pages.get(url_path)
        if cached is None or cached[0] != version:
            cached = (version, listing_page(url_path, folder).encode("utf-8"))
            self._pages[url_path] = cached
        return cached[1]

    def _file(self, target: Path, st: os.stat_result, head: bool, range_header: str) -> Answer:
        size = st.st_size
        headers = {"Content-Type": "image/jp2" if target.suffix.lower() == ".jp2" else "image/tiff",
                   "Last-Modified": http_date(st.st_mtime), "ETag": f'"{int(st.st_mtime):x}-{size:x}"',
                   "Accept-Ranges": "bytes"}
        match = _RANGE.match(range_header.replace(" ", ""))
        if head or not match:
            if head:
                return Answer(200, headers, kind="file", length=size)
            self.counters.full_gets += 1
            return Answer(200, headers, target.read_bytes(), kind="file")
        first, last = match.groups()
        if first == "":
            start, end = max(size - int(last or 0), 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        if start >= size or end < start:
            headers["Content-Range"] = f"bytes */{size}"
            return Answer(416, headers, kind="file")
        self.counters.range_requests += 1
        fd = os.open(target, os.O_RDONLY)
        try:
            body = os.pread(fd, end - start + 1, start)
        finally:
            os.close(fd)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return Answer(206, headers, body, kind="file")


_MAX_HEAD = 65536


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: requests parsed as they come, answered in order."""

    def __init__(self, server: FileServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD and self.transport is not None:
                    self.transport.close()
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body_length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < end + 4 + body_length:
                return
            self.buffer = self.buffer[end + 4 + body_length:]
            method, _, rest = lines[0].partition(" ")
            path, _, version = rest.rpartition(" ")
            keep_alive = (headers.get("connection", "").lower() != "close"
                          and (version == "HTTP/1.1" or headers.get("connection", "").lower() == "keep-alive"))
            control = self.server.control(method, path)
            if control is not None:
                self._send(control, method == "HEAD", keep_alive, counted=False)
            else:
                self._send(self.server.answer(method, path, headers.get("range", "")), method == "HEAD",
                           keep_alive, counted=True)

    def _send(self, answer: Answer, head: bool, keep_alive: bool, counted: bool) -> None:
        if self.transport is None:
            return
        length = answer.length if answer.length is not None else len(answer.body)
        head_lines = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}", f"Server: {SERVER_NAME}",
                      f"Date: {http_date(time.time())}", f"Content-Length: {length}",
                      *(f"{k}: {v}" for k, v in answer.headers.items()),
                      "Connection: keep-alive" if keep_alive else "Connection: close"]
        message = ("\r\n".join(head_lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else answer.body)
        if counted:
            self.server.count_sent(answer, len(message))
        self.transport.write(message)
        if not keep_alive:
            self.transport.close()


async def _serve_forever(root: Path, latency: float, port: int) -> None:
    counters = LineCounters()
    server = FileServer(root, counters)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    listener = await loop.create_server(lambda: _Connection(server), sock=sock, backlog=4096)
    direct = sock.getsockname()[1]
    line = DelayLine(("127.0.0.1", direct), latency, port=port, counters=counters)
    sys.stdout.write(f"PORT {await line.start()} DIRECT {direct}\n")
    sys.stdout.flush()
    try:
        await until_stopped()
    finally:
        line.close()
        listener.close()


def main(argv: list[str] | None = None) -> None:
    """Serve ROOT on 127.0.0.1 until SIGTERM or SIGINT; print ``PORT n`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("root", type=Path, help="Folder to serve.")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one.")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="Round trip of the delay line.")
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.root, args.latency_ms / 1000.0, args.port))


class LatencyServer:
    """The latency server in a child process: a context manager that always stops it."""

    def __init__(self, root: Path, latency_ms: float = 20.0, start_timeout_s: float = 20.0) -> None:
        self.root = root
        self.latency_ms = latency_ms
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.direct_port = 0
        """The server's own port, not delayed: for the counters."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, with a trailing slash."""
        return f"http://127.0.0.1:{self.port}/"

    def start(self) -> LatencyServer:
        """Start the process and wait until it listens."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.latency_server", str(self.root),
             "--latency-ms", str(self.latency_ms)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[2])
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout_s
        buffer = b""
        while time.monotonic() < deadline and self.process.poll() is None:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                buffer += os.read(fd, 4096)
            if b"\n" in buffer:
                line = buffer.split(b"\n", 1)[0].decode()
                if line.startswith("PORT "):
                    words = line.split()
                    self.port, self.direct_port = int(words[1]), int(words[3])
                    return self
        self.stop()
        raise RuntimeError(f"the latency server did not start within {self.start_timeout_s} s")

    def stop(self) -> None:
        """Stop the process and wait for it (killed after 10 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()
        self.process = None

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.direct_port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """The counters since the last reset."""
        return self._call("GET", STATS_PATH)

    def reset(self) -> None:
        """Set the counters to zero."""
        self._call("POST", RESET_PATH)

    def __enter__(self) -> LatencyServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    main()
