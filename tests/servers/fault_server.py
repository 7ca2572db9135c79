"""An HTTP server that fails on purpose, run as a child process by `tests.servers.FaultyHTTP`.

    python tests/fault_server.py ROOT PORT --log FILE [--fail-first N] [--stall PREFIX] [--redirect URL]
                                 [--redirect-status N] [--silent] [--hostile MODE] [--host ADDRESS]
                                 [--down-while FILE] [--hold-while FILE]

It serves ROOT like ``python -m http.server`` (a bare list of links), except that:

- ``--fail-first N``: the first N requests of every path get ``503 Service Unavailable``;
- ``--stall PREFIX``: requests whose path starts with PREFIX never get an answer;
- ``--redirect URL``: every request is redirected (302, or ``--redirect-status``) to URL followed by its path;
- ``--silent``: connections are accepted and never answered at all, not even an FTP or SSH banner;
- ``--hostile MODE``: every GET answers as `HOSTILE` says (generated bodies, nothing read from disk
  but ROOT's files and their nginx-style listings).
- ``--down-while FILE``: while FILE exists, every file (not folder) whose path starts with what FILE
  holds (every file when it is empty) gets ``503 Service Unavailable``: a storage failing halfway.
- ``--hold-while FILE``: while FILE exists (at most `HOLD_MAX_S`), every file (not folder) waits
  for its answer: a test holds a scan in its reading step as long as it needs, then lets it end.

Every request is logged as ``method|path|status|0|`` to FILE, 0 as the status of a stalled one.
"""

from __future__ import annotations

import argparse
import html
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOLD_MAX_S = 300.0
"""Longest a request waits for `--hold-while` to be lifted."""


class FaultyHandler(SimpleHTTPRequestHandler):
    """Serves files and listings, failing as the command line asks."""

    fail_first = 0
    stall: str | None = None
    redirect: str | None = None
    redirect_status = 302
    hostile: str | None = None
    down_while: Path | None = None
    hold_while: Path | None = None
    log_path: Path
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def _record(self, status: int) -> None:
        with self.lock, open(self.log_path, "a") as log:
            log.write(f"{self.command}|{self.path}|{status}|0|{self.headers.get('Range', '')}\n")

    def _fault(self) -> bool:
        with self.lock:
            self.seen[self.path] += 1
            count = self.seen[self.path]
        self._hold()
        if self.stall is not None and self.path.startswith(self.stall):
            self._record(0)
            time.sleep(3600)
            return True
        if self.redirect is not None:
            self._record(self.redirect_status)
            self.send_response(self.redirect_status)
            self.send_header("Location", self.redirect + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        if self._down() or count <= self.fail_first:
            self._record(503)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def _hold(self) -> None:
        if self.hold_while is None or self.path.endswith("/"):
            return
        deadline = time.monotonic() + HOLD_MAX_S
        while self.hold_while.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def _down(self) -> bool:
        if self.down_while is None or self.path.endswith("/"):
            return False
        try:
            prefix = self.down_while.read_text().strip()
        except FileNotFoundError:
            return False
        return self.path.startswith(prefix)

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.hostile is not None and not self._fault():
            try:
                HOSTILE[self.hostile](self)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up: what it is expected to do
            return
        if not self._fault():
            self._record(200)
            super().do_GET()

    # What the hostile modes share.

    def _local(self) -> Path:
        return Path(self.translate_path(self.path.split("?", 1)[0]))

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self._record(status)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _stream(self, chunks: Iterator[bytes]) -> None:
        for chunk in chunks:
            self.wfile.write(chunk)
            self.wfile.flush()

    def _trickle(self, data: bytes, every_s: float = 1.0) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(every_s)

    def nginx_listing(self) -> bytes:
        """ROOT's folder at this path as nginx's autoindex shows it, exact sizes included."""
        folder = self._local()
        lines = []
        for entry in sorted(folder.iterdir()):
            name = entry.name + ("/" if entry.is_dir() else "")
            stamp = time.strftime("%d-%b-%Y %H:%M", time.gmtime(entry.stat().st_mtime))
            size = "-" if entry.is_dir() else str(entry.stat().st_size)
            lines.append(f'<a href="{html.escape(name)}">{html.escape(name)}</a>    {stamp}  {size:>19}')
        page = "<html><head><title>Index</title></head><body><h1>Index</h1><hr><pre><a href=\"../\">../</a>\n"
        return (page + "\n".join(lines) + "\n</pre><hr></body></html>\n").encode()

    def serve_listing_or(self, file_answer: Callable[[Path], None]) -> None:
        """A folder's nginx-style listing, or `file_answer` for a file."""
        local = self._local()
        if local.is_dir():
            body = self.nginx_listing()
            self._head(200, {"Content-Type": "text/html", "Content-Length": str(len(body))})
            self.wfile.write(body)
        elif local.is_file():
            file_answer(local)
        else:
            self._head(404, {"Content-Length": "0"})

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        if not self._fault():
            self._record(200)
            super().do_HEAD()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: the log file says it all."""


def _repeat(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


def _links_forever() -> Iterator[bytes]:
    n = 0
    while True:
        yield "".join(f'<a href="f{i}.tif">f{i}.tif</a>\n' for i in range(n, n + 1000)).encode()
        n += 1000


def _gzip_bomb() -> Iterator[bytes]:
    """A gzip stream of endless spaces: a few KB on the wire for every MB decoded."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1024 * 1024)
    while True:
        yield compressor.compress(block) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _s3_listing_forever() -> Iterator[bytes]:
    yield (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
           b'2006-03-01/"><Name>pcrs</Name><Prefix></Prefix><KeyCount>1000</KeyCount><MaxKeys>1000</MaxKeys>'
           b'<IsTruncated>false</IsTruncated>')
    n = 0
    while True:
        yield "".join(f"<Contents><Key>d{i}.tif</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                      f"<ETag>&quot;e{i}&quot;</ETag><Size>1000</Size><StorageClass>STANDARD</StorageClass>"
                      "</Contents>" for i in range(n, n + 1000)).encode()
        n += 1000


def _s3_endless_error(h: FaultyHandler) -> None:
    """An S3 endpoint listing one object, and answering its GetObject with a 500 and an endless body."""
    if "list-type=2" in h.path:
        body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
                b'2006-03-01/"><Name>pcrs</Name><Prefix>livrable/</Prefix><KeyCount>1</KeyCount><MaxKeys>1000'
                b'</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>livrable/d0.tif</Key><LastModified>'
                b'2026-01-01T00:00:00.000Z</LastModified><ETag>&quot;e0&quot;</ETag><Size>1000</Size><StorageClass>'
                b'STANDARD</StorageClass></Contents></ListBucketResult>')
        h._head(200, {"Content-Type": "application/xml", "Content-Length": str(len(body))})
        h.wfile.write(body)
        return
    h._head(500, {"Content-Type": "application/xml"})
    h._stream(_repeat(b"<Error><Code>InternalError</Code>" + b" " * 65000 + b"</Error>"))


def _deflated(raw: bool) -> Callable[[FaultyHandler], None]:
    """Listings sent deflate-encoded (zlib-wrapped as RFC 9110 says, or `raw` as some servers do),
    files as http.server sends them (200, the whole file)."""
    def answer(h: FaultyHandler) -> None:
        if not h._local().is_dir():
            h._record(200)
            SimpleHTTPRequestHandler.do_GET(h)
            return
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        body = packer.compress(h.nginx_listing()) + packer.flush()
        h._head(200, {"Content-Type": "text/html", "Content-Encoding": "deflate", "Content-Length": str(len(body))})
        h.wfile.write(body)
    return answer


def _trickle_status(h: FaultyHandler) -> None:
    h._record(200)
    h._trickle(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + b" " * 100_000)


def _trickle_body(h: FaultyHandler) -> None:
    h._head(200, {"Content-Type": "text/html"})
    h._trickle(b"<html><body>" + b" " * 100_000)


def _retry_after(h: FaultyHandler) -> None:
    h._head(429, {"Retry-After": "999999", "Content-Length": "0"})


def _endless(chunks: Callable[[], Iterator[bytes]], headers: dict[str, str]) -> Callable[[FaultyHandler], None]:
    def answer(h: FaultyHandler) -> None:
        h._head(200, headers)
        h._stream(chunks())
    return answer


def _ignore_range(h: FaultyHandler) -> None:
    """Files answered 200 with an endless body (the file, then zeros) whatever the Range asked."""
    def whole(local: Path) -> None:
        h._head(200, {"Content-Type": "application/octet-stream"})
        h.wfile.write(local.read_bytes())
        h._stream(_repeat(bytes(1024 * 1024)))
    h.serve_listing_or(whole)


def _huge_content_range(h: FaultyHandler) -> None:
    """Files answered 206 with their first bytes, claiming a total of 10^15 bytes."""
    def claim(local: Path) -> None:
        data = local.read_bytes()[:16384]
        h._head(206, {"Content-Range": f"bytes 0-{len(data) - 1}/{10**15}", "Content-Length": str(len(data))})
        h.wfile.write(data)
    h.serve_listing_or(claim)


def _slow_first_byte(h: FaultyHandler) -> None:
    """Files answered 206 with their first byte at once, the rest one second later."""
    def slow(local: Path) -> None:
        first, _, last = h.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
        data = local.read_bytes()
        end = min(len(data), int(last) + 1) if last else len(data)
        part = data[int(first):end]
        h._head(206, {"Content-Range": f"bytes {first}-{end - 1}/{len(data)}", "Content-Length": str(len(part))})
        h.wfile.write(part[:1])
        h.wfile.flush()
        time.sleep(1.0)
        h.wfile.write(part[1:])
    h.serve_listing_or(slow)


def _fan_out(h: FaultyHandler) -> None:
    """Every page links to four new folders below it, and no file."""
    base = h.path.rstrip("/").rsplit("/", 1)[-1] or "d"
    body = "".join(f'<a href="{base}{i}/">{base}{i}/</a>\n' for i in range(4)).encode()
    h._head(200, {"Content-Type": "text/html", "Content-Length": str(len(body))})
    h.wfile.write(body)


HOSTILE: dict[str, Callable[[FaultyHandler], None]] = {
    "trickle-status": _trickle_status,
    "trickle-listing": _trickle_body,
    "retry-after": _retry_after,
    "endless-page": _endless(lambda: _repeat(b"<p>" + b"x" * 65533), {"Content-Type": "text/html"}),
    "endless-links": _endless(_links_forever, {"Content-Type": "text/html"}),
    "gzip-bomb": _endless(_gzip_bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
    "endless-json": _endless(lambda: _repeat(b" " * 65536), {"Content-Type": "application/json"}),
    "endless-s3-listing": _endless(_s3_listing_forever, {"Content-Type": "application/xml"}),
    "s3-endless-error": _s3_endless_error,
    "deflate": _deflated(raw=False),
    "raw-deflate": _deflated(raw=True),
    "ignore-range": _ignore_range,
    "huge-content-range": _huge_content_range,
    "slow-first-byte": _slow_first_byte,
    "fan-out": _fan_out,
}
"""``--hostile`` modes: how every GET is answered."""


def silent(port: int, log_path: Path) -> None:
    """Accept connections and never say a word."""
    held = []
    with socket.create_server(("127.0.0.1", port)) as server:
        while True:
            conn, _ = server.accept()
            held.append(conn)
            with open(log_path, "a") as log:
                log.write("CONNECT||0|0|\n")


def main() -> None:
    """Parse the command line and serve until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--stall")
    parser.add_argument("--redirect")
    parser.add_argument("--redirect-status", type=int, default=302)
    parser.add_argument("--silent", action="store_true")
    parser.add_argument("--hostile", choices=sorted(HOSTILE))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--down-while", type=Path)
    parser.add_argument("--hold-while", type=Path)
    args = parser.parse_args()
    args.log.touch()
    if args.silent:
        silent(args.port, args.log)
        return
    FaultyHandler.fail_first = args.fail_first
    FaultyHandler.stall = args.stall
    FaultyHandler.redirect = args.redirect
    FaultyHandler.redirect_status = args.redirect_status
    FaultyHandler.hostile = args.hostile
    FaultyHandler.down_while = args.down_while
    FaultyHandler.hold_while = args.hold_while
    FaultyHandler.log_path = args.log
    server = ThreadingHTTPServer((args.host, args.port), partial(FaultyHandler, directory=str(args.root)))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
